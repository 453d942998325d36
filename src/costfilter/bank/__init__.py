"""What memory-bank methods share: the bank itself (coreset selection, nearest-neighbour search in
float32 / bfloat16, leave-one-out by row owner) and the routing between learned categories."""
