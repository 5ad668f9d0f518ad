"""Deposit addresses: each account's own address on each chain, derived from the operator's account-level
extended PUBLIC key (BIP32/BIP44, m/44'/coin'/account'): the gateway never holds a private key. Pure."""

from __future__ import annotations

from typing import Any, Literal

# bip_utils (and what it pulls in) is imported where a key is used, so that the gateway loads it only when chains
# are configured.
Family = Literal["evm", "tron"]
ACCOUNT_DEPTH = 3  # m/44'/coin'/account'
MAX_INDEX = 2**31 - 1  # non-hardened child indexes
TRON_PREFIX = b"\x41"


class AddressError(ValueError):
    """An extended key or an address that cannot be used; the message says why."""


def _coin(family: Family) -> Any:
    from bip_utils import Bip44Coins

    return {"evm": Bip44Coins.ETHEREUM, "tron": Bip44Coins.TRON}[family]


def check_xpub(xpub: str, family: Family) -> None:
    """An account-level extended public key (depth 3), and public only: a private key is refused, never used."""
    if xpub.startswith(("xprv", "tprv", "yprv", "zprv")):
        raise AddressError("this is an extended PRIVATE key: give the account's extended public key (xpub) only")
    from bip_utils import Bip44

    try:
        key = Bip44.FromExtendedKey(xpub, _coin(family))
    except Exception as exc:  # noqa: BLE001 - bip_utils raises several kinds for a malformed key
        if "Depth" in type(exc).__name__:
            raise AddressError("the extended key is not at the account level: export m/44'/coin'/account' "
                               "(depth 3)") from None
        raise AddressError(f"not a valid extended public key: {type(exc).__name__}") from None
    if not key.IsPublicOnly():
        raise AddressError("give the account's extended public key (xpub), not a private one")
    if key.Level() != ACCOUNT_DEPTH:
        raise AddressError(f"the extended key is at depth {int(key.Level())}; export the account level "
                           f"(m/44'/coin'/account', depth 3)")


def deposit_address(xpub: str, family: Family, index: int) -> str:
    """The address m/44'/coin'/account'/0/index: EIP-55 checksummed on EVM chains, base58check (T...) on TRON."""
    if not 0 <= index <= MAX_INDEX:
        raise AddressError(f"address index {index} is out of range (0 to {MAX_INDEX})")
    from bip_utils import Bip44, Bip44Changes

    key = Bip44.FromExtendedKey(xpub, _coin(family))
    return str(key.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress())


def evm_key(address: str) -> str:
    """An EVM address as stored and compared: 0x + 40 lower-case hex digits."""
    a = address.lower()
    if len(a) != 42 or not a.startswith("0x") or any(c not in "0123456789abcdef" for c in a[2:]):
        raise AddressError(f"not an EVM address: {address[:60]!r}")
    return a


def checksummed(address: str) -> str:
    """An EVM address in its EIP-55 mixed-case form, as wallets show it (and check it)."""
    from bip_utils.utils.crypto import Kekkak256

    lower = evm_key(address)[2:]
    digest = Kekkak256.QuickDigest(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest))


def tron_to_evm(address: str) -> str:
    """A TRON base58check address (T...) as the 20-byte hex form its contract events carry (0x...)."""
    from bip_utils import Base58Decoder

    try:
        raw = Base58Decoder.CheckDecode(address)
    except Exception:  # noqa: BLE001 - a bad checksum or alphabet
        raise AddressError(f"not a TRON address: {address[:60]!r}") from None
    if len(raw) != 21 or raw[:1] != TRON_PREFIX:
        raise AddressError(f"not a TRON address: {address[:60]!r}")
    return "0x" + raw[1:].hex()


def evm_to_tron(address: str) -> str:
    """The 20-byte hex form (0x..., or TRON's 41...) as a TRON base58check address."""
    from bip_utils import Base58Encoder

    h = address.lower().removeprefix("0x")
    if len(h) == 42 and h.startswith("41"):
        h = h[2:]
    return Base58Encoder.CheckEncode(TRON_PREFIX + bytes.fromhex(evm_key("0x" + h)[2:]))
