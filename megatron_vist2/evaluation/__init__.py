"""The evaluate program (tools/evaluate.py): the model and its controls scored on identical
held-out targets in the launcher's layout (heldout.py), history retention against the text and
window controls, OCR read-back, retrieval and long-document loss through the inference engine
(runner.py), written by report.py (docs/evaluation.md, docs/fidelity.md). The measures it reports
are metrics/."""
