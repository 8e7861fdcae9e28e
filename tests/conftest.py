"""Test-session settings: one intra-op thread per test process (2-core CI machines run faster
this way; nothing in the package depends on it)."""
import torch

torch.set_num_threads(1)
