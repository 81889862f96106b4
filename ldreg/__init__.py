"""ldreg: a learning-dynamics laboratory for LLM finetuning.

Ren & Sutherland's decomposition (ICLR 2025) made operational: tracked finetuning runs whose
probes and eNTK observations land in MongoDB, and queries that compare them across runs.
"""

__version__ = "0.1.0"
