# Sourced by the tiny_cpu scripts: the tokenizer and the pretraining datasets from the bundled
# corpus, built once (delete them to rebuild).
if [[ -f data/tokenizer/sotu.model ]]; then
  echo "tokenizer: data/tokenizer/sotu.model exists (delete it to retrain)"
else
  echo "training the tokenizer on the bundled corpus"
  python tools/train_tokenizer.py --corpus sotu --vocab-size 2048 --output data/tokenizer/sotu.model
fi
if [[ -f data/sotu_train.json && -f data/sotu_valid.json ]]; then
  echo "datasets: data/sotu_{train,valid} exist (delete them to rebuild)"
else
  echo "tokenizing the corpus into data/sotu_{train,valid}.bin/.idx"
  python tools/preprocess_data.py --corpus sotu --tokenizer data/tokenizer/sotu.model --output-prefix data/sotu
fi
