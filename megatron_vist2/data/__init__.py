"""Data path: corpus -> tokenizer -> indexed dataset -> chunks -> renders -> packed rows."""
