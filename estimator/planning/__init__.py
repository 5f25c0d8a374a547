"""Planning on a mesh: plan() and its activation/signal models, design reviews (compare, explain,
fit) and serving-side allocation of what was planned."""
