"""The UDS utility on real rows: how the nuclear norm of the logits relates to a row's
length and its loss, for 64 mul2x2 training rows under the zoo's rl-start@0 (one per row,
52 tokens; experiments/data_methods/README.md section 2).

  python experiments/data_methods/uds_diagnostic.py
"""

import jax.numpy as jnp
import numpy as np

from jaxpost import selection
from jaxpost.data import generated, tasks, template
from jaxpost.scoring import model_outputs
from jaxpost.types import Batch

model, tok, _ = generated.load_run("zoo:rl-start@0")
mix = tasks.mixture({"mul2x2": 1.0}, "train", 7)
rows = []
for i in range(64):
  enc = template.encode_example(tok, mix.problem_at(i).example)
  rows.append(enc)
T = 52
tokens = np.zeros((64, T), np.int32)
seg = np.zeros((64, T), np.int32)
roles = np.zeros((64, T), np.int32)
lens = []
for i, e in enumerate(rows):
  n = min(len(e.tokens), T)
  tokens[i, :n] = e.tokens[:n]
  seg[i, :n] = 1
  lens.append(n)
pos = np.broadcast_to(np.arange(T), (64, T)).astype(np.int32)
b = Batch(
  tokens=jnp.asarray(tokens),
  targets=jnp.asarray(np.roll(tokens, -1, 1)),
  loss_mask=jnp.asarray(seg.astype(np.float32)),
  segment_ids=jnp.asarray(seg),
  positions=jnp.asarray(pos),
  roles=jnp.asarray(roles),
)
logits = model_outputs(model, b)
r = selection.uds(logits, b, None)
u = np.asarray(r.score)
nll = np.asarray(selection._row_nll(logits, b))
print(
  "corr(nuclear, length)",
  np.corrcoef(u, lens)[0, 1],
  "corr(nuclear, nll)",
  np.corrcoef(u, nll)[0, 1],
  "corr(len,nll)",
  np.corrcoef(lens, nll)[0, 1],
)
