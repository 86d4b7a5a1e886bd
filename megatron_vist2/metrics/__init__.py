"""What a forward is scored by, in the training loop and in the evaluation program: the VIST2
objective and its statistics (loss.py), per-target held-out losses and the retention R
(targets.py), OCR read-back (readback.py) and its character error rate (cer.py), and the cheap
subset the trainer runs at each evaluation (during_training.py). Below training/ and evaluation/,
which both use it."""
