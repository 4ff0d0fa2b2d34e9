"""Evaluation of the fine-tuned model: held-out NLL and the conditioning gap (nll), verifiable
instruction following (constraints, ifeval), and paired bootstrap intervals (bootstrap)."""
