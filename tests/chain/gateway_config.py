"""The gateway's side of the local chain in tests: the test mnemonic's account xpub, the token's units, and the
[recharge] and [chains.local] config sections that point a gateway at a ganache and its TestUSDT."""

from __future__ import annotations

from pathlib import Path

from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

from tests.chain.ganache import Token
from tests.conftest import base_config, demo_provider

XPUB = Bip44.FromSeed(Bip39SeedGenerator("abandon " * 11 + "about").Generate(), Bip44Coins.ETHEREUM) \
    .Purpose().Coin().Account(0).PublicKey().ToExtended()
CONFIRMATIONS = 3
USDT = 10**6  # base units per token (6 decimals)


def chain_sections(rpc_url: str, token: Token, start: int, order_ttl: float = 5) -> str:
    return f"""
[recharge]
minimum = "1"
order_ttl = {order_ttl}

[chains.local]
rpc_url = "{rpc_url}"
chain_id = 1337
confirmations = {CONFIRMATIONS}
contract = "{token.address}"
xpub = "{XPUB}"
poll_interval = 0.1
start_block = {start}
"""


def recharge_config(rpc_url: str, token: Token, start: int, log_path: Path, order_ttl: float = 5) -> str:
    """A whole test gateway: the demo provider and model, and the local chain."""
    return base_config(log_path) + demo_provider() + """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
price = { input = "1", output = "1" }
""" + chain_sections(rpc_url, token, start, order_ttl)
