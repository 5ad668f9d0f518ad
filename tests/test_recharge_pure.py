"""USDT recharge, the pure parts: deposit addresses from an xpub (known vectors, and equal to the addresses of
the private-key path), TRON's two address forms, and token amounts into nano-dollars."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins
from hypothesis import given
from hypothesis import strategies as st

from billing.recharge import addresses as addr
from billing.recharge.amounts import credit_for, raw_amount, tokens

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
SEED = Bip39SeedGenerator(MNEMONIC).Generate()


def account(coin: Bip44Coins) -> Bip44:
    return Bip44.FromSeed(SEED, coin).Purpose().Coin().Account(0)


XPUB = {"evm": account(Bip44Coins.ETHEREUM).PublicKey().ToExtended(),
        "tron": account(Bip44Coins.TRON).PublicKey().ToExtended()}


def test_known_vectors_of_the_standard_test_mnemonic() -> None:
    assert addr.deposit_address(XPUB["evm"], "evm", 0) == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    assert addr.deposit_address(XPUB["tron"], "tron", 0) == "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"


@pytest.mark.parametrize("family,coin", [("evm", Bip44Coins.ETHEREUM), ("tron", Bip44Coins.TRON)])
@pytest.mark.parametrize("index", [0, 1, 7, 1000, 2**31 - 1])
def test_the_xpub_gives_the_addresses_of_the_private_key_path(family: addr.Family, coin: Bip44Coins,
                                                              index: int) -> None:
    private = account(coin).Change(Bip44Changes.CHAIN_EXT).AddressIndex(index)
    assert not private.IsPublicOnly()
    assert addr.deposit_address(XPUB[family], family, index) == private.PublicKey().ToAddress()


def test_only_an_account_level_public_key_is_accepted() -> None:
    addr.check_xpub(XPUB["evm"], "evm")
    private = account(Bip44Coins.ETHEREUM).PrivateKey().ToExtended()
    with pytest.raises(addr.AddressError, match="PRIVATE"):
        addr.check_xpub(private, "evm")
    root = Bip44.FromSeed(SEED, Bip44Coins.ETHEREUM).PublicKey().ToExtended()  # depth 0
    with pytest.raises(addr.AddressError, match="account level"):
        addr.check_xpub(root, "evm")
    with pytest.raises(addr.AddressError, match="not a valid extended public key"):
        addr.check_xpub("xpub-nonsense", "evm")
    with pytest.raises(addr.AddressError, match="out of range"):
        addr.deposit_address(XPUB["evm"], "evm", 2**31)


def test_evm_addresses_show_their_eip55_checksum() -> None:
    assert addr.checksummed("0x9858effd232b4033e47d90003d41ec34ecaeda94") == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    assert addr.checksummed("0x52908400098527886E0F7030069857D2E4169EE7") == "0x52908400098527886E0F7030069857D2E4169EE7"


def test_tron_addresses_convert_between_base58check_and_the_hex_of_its_events() -> None:
    t = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
    h = addr.tron_to_evm(t)
    assert len(h) == 42 and addr.evm_to_tron(h) == t and addr.evm_to_tron("41" + h[2:]) == t
    for bad in ("TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdX", "0x9858", "", "T" * 34):
        with pytest.raises(addr.AddressError):
            addr.tron_to_evm(bad)
    assert addr.evm_key("0x9858EfFD232B4033E47d90003D41EC34EcaEda94") == "0x9858effd232b4033e47d90003d41ec34ecaeda94"


def test_amounts_credit_exactly_and_round_down_once() -> None:
    assert credit_for(25_000_000, 6) == 25 * 10**9  # 25 USDT (6 decimals) = 25 USD
    assert credit_for(1, 6) == 1000  # the smallest unit: 0.000001 USD
    assert credit_for(10**18, 18) == 10**9  # BSC's 18-decimal USDT
    assert credit_for(1, 18) == 0 and credit_for(999_999_999, 18) == 0 and credit_for(10**9, 18) == 1
    assert credit_for(100_000_000, 6, fee=Decimal("0.01")) == 99 * 10**9  # 100 USDT less 1%
    assert credit_for(3, 6, usd_per_token=Decimal("0.9999")) == 2999  # 2999.7 rounded down
    with pytest.raises(ValueError):
        credit_for(1, 6, fee=Decimal(1))


@given(st.integers(min_value=0, max_value=10**30), st.sampled_from([0, 6, 8, 18]))
def test_credit_never_exceeds_the_exact_value_by_any_amount(raw: int, decimals: int) -> None:
    exact = Fraction(raw * 10**9, 10**decimals)
    assert exact - 1 < credit_for(raw, decimals) <= exact
    assert raw_amount(tokens(raw, decimals), decimals) == raw if raw else tokens(raw, decimals) == "0"


def test_token_amounts_for_people_and_back() -> None:
    assert tokens(12_500_000, 6) == "12.5" and tokens(1, 6) == "0.000001" and tokens(7, 0) == "7"
    assert raw_amount("12.5", 6) == 12_500_000 and raw_amount("25", 18) == 25 * 10**18
    # an exponent would build 10**999999999 (minutes of CPU on the event loop); other digits, underscores, signs
    for bad in ("0", "-1", "1.0000001", "abc", "NaN", "Infinity", "1e999999999", "1E-999999999", "٣", "1_0", "+5",
                " 5", ".5", "5."):
        with pytest.raises(ValueError):
            raw_amount(bad, 6)
