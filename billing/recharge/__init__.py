"""USDT recharge: deposit addresses derived from the operator's extended public keys, token amounts turned
into wallet credit, and (next) the chain watchers that credit each final deposit exactly once."""
