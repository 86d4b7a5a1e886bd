"""What the compressed context keeps: held-out loss on identical targets, history retention
against the text and window controls, OCR read-back, retrieval and long-document loss through
the inference engine (tools/evaluate.py; docs/fidelity.md)."""
