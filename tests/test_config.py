"""Configuration: valid files load with exact decimal prices; every error names its key."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from core.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent


def base() -> dict:
    return {
        "providers": {"up": {"format": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "K"}},
        "models": {"m": {"provider": "up", "price": {"input": Decimal("0.15"), "output": "0.6"}}},
    }


def test_shipped_config_is_valid() -> None:
    settings = load(ROOT / "config.toml", environ={})
    assert "demo-echo" in settings.models and settings.server.port == 8080
    assert settings.models["demo-echo"].prices.input == 500_000_000  # nano-dollars per 1M tokens


def test_prices_are_exact_integers_of_the_money_unit() -> None:
    s = parse(base(), {"K": "secret"})
    assert s.models["m"].prices.input == 150_000_000 and s.models["m"].prices.output == 600_000_000
    assert s.models["m"].prices.cache_read == 150_000_000  # unset cache prices are the input price
    assert s.models["m"].upstream_model == "m" and s.providers["up"].api_key == "secret"


def test_a_model_is_priced_per_token_or_per_unit_and_that_is_its_kind() -> None:
    cfg = base()
    cfg["models"].update(
        image={"provider": "up", "price": {"image": {"1024x1024": "0.04"}}},
        video={"provider": "up", "price": {"input": "0", "output": "0", "second": "0.1"}},  # zero token prices: allowed
        windowed={"provider": "up", "max_input_tokens": 128000, "price": {"input": "1", "output": "2"}})
    models = parse(cfg, {"K": "k"}).models
    assert [models[n].kind for n in ("m", "image", "video", "windowed")] == ["text", "image", "video", "text"]
    assert models["windowed"].max_input_tokens == 128000 and models["m"].max_input_tokens is None
    with pytest.raises(ConfigError) as err:  # a text model without a token price
        parse({**cfg, "models": {"m": {"provider": "up", "price": {"input": "1"}}}}, {"K": "k"})
    assert str(err.value).startswith("models.m.price.output: required")


@pytest.mark.parametrize("base_url, field", [
    ("http://127.0.0.1:8000/v1", "max_tokens"),  # llama.cpp, vLLM, Ollama, LM Studio...: all read max_tokens
    ("https://api.deepseek.com/v1", "max_tokens"),
    ("https://openrouter.ai/api/v1", "max_tokens"),
    ("https://api.openai.com/v1", "max_completion_tokens"),  # reasoning models refuse max_tokens
    ("https://my-team.openai.azure.com/openai/v1", "max_completion_tokens"),
    ("https://api.groq.com/openai/v1", "max_completion_tokens"),
])
def test_the_limit_field_by_default_is_the_one_the_provider_obeys(base_url: str, field: str) -> None:
    cfg = base()
    cfg["providers"]["up"]["base_url"] = base_url
    assert parse(cfg, {"K": "k"}).providers["up"].limit_field == field
    cfg["providers"]["up"]["limit_field"] = other = ({"max_tokens", "max_completion_tokens"} - {field}).pop()
    assert parse(cfg, {"K": "k"}).providers["up"].limit_field == other  # the operator's choice wins


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["models"]["m"].update(provider="ghost"), "models.m.provider"),
    (lambda c: c["providers"]["up"].update(format="soap"), "providers.up.format"),
    (lambda c: c["providers"]["up"].update(base_url="ftp://x"), "providers.up.base_url"),
    (lambda c: c["providers"]["up"].update(timeouts={"idle": -1}), "providers.up.timeouts.idle"),
    (lambda c: c["providers"]["up"].update(colour="red"), "providers.up.colour"),
    (lambda c: c["models"]["m"]["price"].update(input="cheap"), "models.m.price.input"),
    (lambda c: c["models"]["m"]["price"].update(output="-1"), "models.m.price.output"),
    (lambda c: c["models"]["m"].update(max_output_tokens=0), "models.m.max_output_tokens"),
    (lambda c: c["models"]["m"]["price"].update(input="0.0000000001"), "models.m.price.input"),
    (lambda c: c["models"]["m"]["price"].pop("output"), "models.m.price.output"),
    (lambda c: c.update(server={"port": "80"}), "server.port"),
    (lambda c: c.update(server={"request_log": "/no/such/dir/log"}), "server.request_log"),
    (lambda c: c["providers"].update(d={"builtin": "demo", "base_url": "http://x"}), "providers.d.base_url"),
    (lambda c: c["providers"].update(d={"builtin": "demo", "demo_chunk_delay": -1}), "providers.d.demo_chunk_delay"),
    (lambda c: c.update(models={}), "models"),
    (lambda c: c["providers"]["up"].update(limit_field="max_output_tokens"), "providers.up.limit_field"),
    (lambda c: c["models"]["m"]["price"].update(image={"1024x1024": "0.04"}), "models.m.price.input"),
    (lambda c: c["models"]["m"].update(price={"output": "0", "second": "0.1", "cache_read": "1"}),
     "models.m.price.cache_read"),
    (lambda c: c["models"]["m"].update(price={"image": {"1024x1024": "1"}, "task": "1"}), "models.m.price"),
    (lambda c: c["models"]["m"].update(max_input_tokens=0), "models.m.max_input_tokens"),
    (lambda c: c["providers"]["up"].update(format="anthropic", limit_field="max_tokens"), "providers.up.limit_field"),
])
def test_errors_name_the_key(mutate, key: str) -> None:
    cfg = base()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        parse(cfg, {"K": "secret"})
    assert str(err.value).startswith(key), str(err.value)


def test_image_and_task_prices() -> None:
    cfg = base()
    cfg["models"]["m"]["price"] = {"image": {"1024x1024": "0.04", "1024x1024/hd": "0.08"}}
    cfg["models"]["v"] = {"provider": "up", "price": {"task": "0.5", "second": "0.1"}}
    models = parse(cfg, {"K": "s"}).models
    assert models["m"].image_prices == {"1024x1024": 40_000_000, "1024x1024/hd": 80_000_000}
    assert models["v"].task_price == 500_000_000 and models["v"].second_price == 100_000_000
    cfg["models"]["m"]["price"]["image"] = {"big": "1"}
    with pytest.raises(ConfigError, match=r"^models.m.price.image.big"):
        parse(cfg, {"K": "s"})


def test_missing_key_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"providers.up.api_key_env: environment variable K is not set"):
        parse(base(), {})


def test_cli_stops_with_the_key_in_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.p]\nbuiltin = "demo"\n[models.x]\nprovider = "p"\nmax_output_tokens = "many"\n'
                   'price = { input = "1", output = "1" }\n')
    run = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(bad)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert "config error: models.x.max_output_tokens: must be an integer" in run.stderr


def test_config_chosen_by_environment(tmp_path: Path) -> None:
    good = tmp_path / "alt.toml"
    good.write_text('[providers.p]\nbuiltin = "demo"\n[models.only-here]\nprovider = "p"\n'
                    'price = { input = "0", output = "0" }\n')
    run = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--check"], capture_output=True, text=True,
                         cwd=ROOT, env={"TOKENTOLL_CONFIG": str(good), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 0 and str(good) in run.stdout and "1 models" in run.stdout


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)


def test_channels_are_read_in_priority_order_and_checked() -> None:
    base = """
[providers.a]
base_url = "http://a/v1"
timeouts = { total = 100 }
[providers.b]
format = "anthropic"
base_url = "http://b/v1"
timeouts = { total = 100 }
[billing]
hold_ttl = 250
"""
    settings = parse(tomllib.loads(base + """
[models.m]
channels = [{ provider = "a", upstream_model = "x", priority = 1 },
            { provider = "b", upstream_model = "y", priority = 5, weight = 3 }]
price = { input = "1", output = "1" }
"""), {})
    m = settings.models["m"]
    assert [(c.provider.name, c.upstream_model, c.priority, c.weight) for c in m.channels] == [
        ("b", "y", 5, 3), ("a", "x", 1, 1)]
    assert (m.provider.name, m.upstream_model) == ("b", "y")  # the first channel is the model's own
    single = parse(tomllib.loads(base + '[models.s]\nprovider = "a"\nprice = { input = "1", output = "1" }\n'), {})
    assert [(c.provider.name, c.upstream_model) for c in single.models["s"].channels] == [("a", "s")]
    for bad, message in (
            ('channels = [{ provider = "a" }]\nprovider = "a"', "either provider/upstream_model or channels"),
            ('channels = []', "non-empty array"),
            ('channels = [{ provider = "zz" }]', "channels[0].provider: unknown provider 'zz'"),
            ('channels = [{ provider = "a", weight = 0 }]', "channels[0].weight"),
            ('channels = [{ provider = "a" }, { provider = "a" }]', "listed twice"),
            ('channels = [{ provider = "a", colour = "red" }]', "colour")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse(tomllib.loads(base + f'[models.m]\n{bad}\nprice = {{ input = "1", output = "1" }}\n'), {})
    three = base.replace("hold_ttl = 250", "hold_ttl = 150")
    with pytest.raises(ConfigError, match=r"hold_ttl.*'m' may try channels whose total timeouts add up to 200s"):
        parse(tomllib.loads(three + """
[models.m]
channels = [{ provider = "a" }, { provider = "b" }]
price = { input = "1", output = "1" }
"""), {})


def test_recharge_chains_are_read_and_checked() -> None:
    from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins

    seed = Bip39SeedGenerator("abandon " * 11 + "about").Generate()
    eth = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
    trx = Bip44.FromSeed(seed, Bip44Coins.TRON).Purpose().Coin().Account(0)
    base = '[providers.a]\nbase_url = "http://a/v1"\n[models.m]\nprovider = "a"\nprice = { input = "1", output = "1" }\n'
    usdt_eth = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    settings = parse(tomllib.loads(base + f"""
[recharge]
fee = 0.01
minimum = "5"
[chains.ethereum]
rpc_url_env = "ETH_RPC"
chain_id = 1
contract = "{usdt_eth}"
xpub = "{eth.PublicKey().ToExtended()}"
[chains.tron]
kind = "tron"
rpc_url = "https://api.trongrid.io/jsonrpc"
contract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
xpub = "{trx.PublicKey().ToExtended()}"
""", parse_float=Decimal), {"ETH_RPC": "https://eth.example/v3/secret"})
    eth_chain, tron_chain = settings.chains["ethereum"], settings.chains["tron"]
    assert (eth_chain.confirmations, eth_chain.decimals, eth_chain.contract) == (12, 6, usdt_eth.lower())
    assert eth_chain.rpc_url == "https://eth.example/v3/secret"
    assert tron_chain.confirmations == 19 and tron_chain.contract.startswith("0x") and len(tron_chain.contract) == 42
    assert settings.recharge.minimum == 5 * 10**9 and str(settings.recharge.fee) == "0.01"
    for bad, message in (
            (f'contract = "{usdt_eth}"\nxpub = "{eth.PrivateKey().ToExtended()}"\nchain_id = 1', "xpub: this is an extended PRIVATE key"),
            (f'contract = "{usdt_eth}"\nxpub = "{eth.PublicKey().ToExtended()}"\nchain_id = 999', "confirmations: required"),
            (f'contract = "0x12"\nxpub = "{eth.PublicKey().ToExtended()}"\nchain_id = 1', "contract: not an EVM address"),
            (f'contract = "{usdt_eth}"\nxpub = "{eth.PublicKey().ToExtended()}"\nrpc_url_env = "NOPE"', "NOPE is not set")):
        text = base + '[chains.x]\nrpc_url = "https://x"\n' + bad + "\n"
        if "rpc_url_env" in bad:
            text = text.replace('rpc_url = "https://x"\n', "")
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse(tomllib.loads(text), {})
