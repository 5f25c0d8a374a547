"""The seed API: Modular MAX 26.7.0's MemoryEstimator and KV-cache params, bit-exact, MAX's words."""
