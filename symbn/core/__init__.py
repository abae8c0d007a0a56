"""The mathematics: specs, safe expressions, the forward graph, reverse mode, proofs."""
