#!/usr/bin/env python3
"""Generate the BATV (prvs) known-answer test vectors sign.json and verify.json.

This is an independent implementation of the rules in shared/reference/prvs.md and of the
project's signing-skip and parsing decisions (see README.md beside this file). It uses the
Python standard library only and has no randomness: running it again writes identical files.

    python3 testvectors/generate.py
"""
import datetime
import hashlib
import hmac
import json
import os
import re

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
EPOCH = datetime.date(1970, 1, 1)

# ---------------------------------------------------------------------------------------------
# Keys: fixed bytes, derived from fixed strings so that nobody has to trust a blob of hex.

KEYS = {i: hashlib.sha256(b"batv test key %d" % i).digest() for i in range(10)}  # 32 bytes each
SPECIAL_KEYS = {
    "1-byte": b"k",
    "16-byte": hashlib.sha256(b"batv 16-byte key").digest()[:16],
    "64-byte": hashlib.sha512(b"batv 64-byte key").digest(),
    "65-byte": (hashlib.sha512(b"batv 65-byte key").digest() * 2)[:65],   # > 64: HMAC hashes it
    "100-byte": (hashlib.sha512(b"batv 100-byte key").digest() * 2)[:100],
    "high-bytes": bytes(range(0x80, 0x100, 4)),                           # 32 bytes, all >= 0x80
    "trailing-newline": b"batv-tools style key file\n",                   # key file, newline kept
}

# ---------------------------------------------------------------------------------------------
# The algorithm.

ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(s):
    """ASCII-only lowercasing (non-ASCII characters are left as they are)."""
    return s.translate(ASCII_LOWER)


def day_number(date):
    return (datetime.date.fromisoformat(date) - EPOCH).days


def mac6(key, kddd, address):
    """First 3 bytes, lowercase hex, of HMAC-SHA1(key, K || DDD || address-bytes)."""
    return hmac.new(key, kddd.encode("ascii") + address.encode("utf-8"), hashlib.sha1).hexdigest()[:6]


def make_tag(key, key_id, expiry, address):
    kddd = "%d%03d" % (key_id, expiry)
    return kddd + mac6(key, kddd, address)


def tag_ok(t):
    """K (digit), DDD (3 digits), SSSSSS (6 hex digits, either case); t is bytes."""
    return (len(t) == 10 and all(c in b"0123456789" for c in t[:4])
            and all(c in b"0123456789abcdefABCDEF" for c in t[4:]))


def parse(address, delim="+"):
    """Positional parse. Returns (status, form, tag, loc_core, domain); status is ok/missing/malformed.

    Positions and lengths count octets of the UTF-8 form, as a byte-oriented implementation would.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return ("malformed" if lower(address[:5]) == "prvs=" else "missing"), "", "", "", ""
    b, n, d = local.encode("utf-8"), len(local.encode("utf-8")), delim.encode("utf-8")
    ok = lambda form, tag, core: ("ok", form, tag.decode(), core.decode("utf-8"), domain)
    if b[:5].lower() == b"prvs=":
        if n >= 17 and b[15:16] == b"=" and tag_ok(b[5:15]):
            return ok("standard", b[5:15], b[16:])
        if n >= 17 and b[n - 11:n - 10] == b"/" and tag_ok(b[n - 10:]):
            return ok("draft00", b[n - 10:], b[5:n - 11])
        return "malformed", "", "", "", ""
    if n >= 17 and b[n - 16:n - 15] == d and b[n - 15:n - 10].lower() == b"prvs=":
        if not tag_ok(b[n - 10:]):
            return "malformed", "", "", "", ""
        return ok("subaddress", b[n - 10:], b[:n - 16])
    return "missing", "", "", "", ""


TAGGED_SHAPE = re.compile(r"[A-Za-z0-9]+=[^=]+=.+", re.DOTALL)


def sign_skip(address, delim):
    """Why this address must not be signed, or "" if it may be. Checks in the project's order."""
    if address == "":
        return "null-sender"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "malformed-address"
    if local.startswith('"'):
        return "quoted"
    if lower(local[:5]) in ("srs0=", "srs1="):
        return "srs"
    if TAGGED_SHAPE.fullmatch(local) or parse(address, delim or "+")[0] == "ok":
        return "tagged"
    if len(local.encode("utf-8")) + 16 > 64:
        return "too-long"
    return ""


def sign(key, key_id, date, lifetime, address, sub_address=""):
    """Returns (signed address, skip word); exactly one of them is non-empty."""
    skip = sign_skip(address, sub_address)
    if skip:
        return "", skip
    local, _, domain = address.rpartition("@")
    tag = make_tag(key, key_id, (day_number(date) + lifetime) % 1000, address)
    if sub_address:
        return "%s%sprvs=%s@%s" % (local, sub_address, tag, domain), ""
    return "prvs=%s=%s@%s" % (tag, local, domain), ""


def verify(keys, date, max_lifetime, strict, delim, address):
    res = {"outcome": "", "key_id": -1, "expiry": -1, "form": "", "original": "", "match": ""}
    status, form, tag, core, domain = parse(address, delim)
    if status != "ok":
        res["outcome"] = status
        return res
    original = core + "@" + domain
    res.update(key_id=int(tag[0]), expiry=int(tag[1:4]), form=form, original=original)
    if res["key_id"] not in keys:
        res["outcome"] = "unknown-key"
        return res
    d = (res["expiry"] - day_number(date) % 1000) % 1000
    if not 0 <= d <= max_lifetime:
        res["outcome"] = "expired"
        return res
    key, want = keys[res["key_id"]], lower(tag[4:])
    if hmac.compare_digest(mac6(key, tag[:4], original), want):
        res.update(outcome="valid", match="exact")
    elif not strict and hmac.compare_digest(mac6(key, tag[:4], lower(original)), want):
        res.update(outcome="valid", match="folded")
    else:
        res["outcome"] = "bad-signature"
    return res


# ---------------------------------------------------------------------------------------------
# Vector builders. The `want` arguments are only a guard that each vector tests what its name
# says; every expected value written to the files is computed above.

SIGN, VERIFY = [], []


def key_of(k):
    return KEYS[k] if isinstance(k, int) else SPECIAL_KEYS[k]


def sv(name, address, key=0, key_id=None, date="2025-03-14", lifetime=7, sub="", want=""):
    if key_id is None:
        key_id = key if isinstance(key, int) else 0
    expected, skip = sign(key_of(key), key_id, date, lifetime, address, sub)
    assert skip == want, (name, skip, want)
    SIGN.append({"name": "sign/" + name, "key_hex": key_of(key).hex(), "key_id": key_id,
                 "date": date, "lifetime": lifetime, "address": address, "sub_address": sub,
                 "expected": expected, "skip": skip})
    return expected


def tagged(address, key=0, key_id=None, date="2025-03-14", lifetime=7, sub=""):
    """A tag made by the signer above (which must not skip)."""
    if key_id is None:
        key_id = key if isinstance(key, int) else 0
    out, skip = sign(key_of(key), key_id, date, lifetime, address, sub)
    assert not skip, (address, skip)
    return out


def vv(name, address, keys=(0,), date="2025-03-14", max_lifetime=7, strict=False, delim="+",
       want="valid", match=None):
    if isinstance(keys, dict):   # {key id: key name}
        keyring = {i: key_of(k) for i, k in keys.items()}
    else:                        # key ids, each with its own key from KEYS
        keyring = {i: KEYS[i] for i in keys}
    res = verify(keyring, date, max_lifetime, strict, delim, address)
    assert res["outcome"] == want, (name, res, want)
    assert match is None or res["match"] == match, (name, res)
    VERIFY.append(dict({"name": "verify/" + name,
                        "keys": [{"id": i, "key_hex": k.hex()} for i, k in sorted(keyring.items())],
                        "date": date, "max_lifetime": max_lifetime, "strict": strict,
                        "delimiter": delim, "address": address}, **res))


def set_tag(address, fn):
    """Apply fn to the 10-character tag of a standard-form address."""
    return address[:5] + fn(address[5:15]) + address[15:]


def flip(c):
    return "0123456789abcdef"[(int(c, 16) + 1) % 16]


# ---------------------------------------------------------------------------------------------
# Signing vectors.

for i in range(10):  # every key id, each with its own key
    sv("key-id-%d" % i, "user@example.com", key=i, date="2025-01-%02d" % (10 + i))

for k in SPECIAL_KEYS:
    sv("key-" + k, "user@example.com", key=k, key_id=3)

sv("case-mixed-exact-bytes", "John.Doe@Example.COM")
sv("local-plus", "user+folder@example.com")
sv("local-dots", "first.middle.last@example.com")
sv("local-verp", "list-bounces+user=example.org@lists.example.com")
sv("local-single-equals", "user=name@example.com")
sv("local-non-alnum-tag-type", "bounce-123=user=example.org@lists.example.com")
sv("local-equals-empty-rest", "a=b=@example.com")
sv("utf8-local", "jürgen@example.com")

# Day-number wraps: 2024-10-04 is day 20000, 2027-07-01 is 21000, 2030-03-27 is 22000.
sv("wrap-20000-day-before", "user@example.com", date="2024-10-03")
sv("wrap-20000-expiry-000", "user@example.com", date="2024-09-27")
sv("wrap-21000-day-before-lifetime-30", "bob@example.org", date="2027-06-30", lifetime=30)
sv("wrap-22000-day-before-lifetime-1", "carol@example.net", date="2030-03-26", lifetime=1)

sv("subaddress-plus", "user@example.com", sub="+")
sv("subaddress-minus", "user@example.com", sub="-")

sv("length-48-octets-signs", "a" * 48 + "@example.com")
sv("length-49-octets-too-long", "a" * 49 + "@example.com", want="too-long")
sv("length-utf8-48-octets-signs", "ü" + "a" * 46 + "@example.com")
sv("length-utf8-49-octets-too-long", "ü" + "a" * 47 + "@example.com", want="too-long")
sv("length-subaddress-48-octets-signs", "a" * 48 + "@example.com", sub="+")
sv("length-subaddress-49-octets-too-long", "a" * 49 + "@example.com", sub="+", want="too-long")

sv("skip-null-sender", "", want="null-sender")
sv("skip-no-at", "user", want="malformed-address")
sv("skip-empty-local", "@example.com", want="malformed-address")
sv("skip-empty-domain", "user@", want="malformed-address")
sv("skip-quoted", '"john smith"@example.com', want="quoted")
sv("skip-quoted-with-at", '"a@b"@example.com', want="quoted")
sv("skip-srs0", "SRS0=HHH=TT=example.org=user@forwarder.example", want="srs")
sv("skip-srs1-lowercase", "srs1=HHH=example.net==HHH=TT=example.org=user@forwarder.example",
   want="srs")
sv("skip-tagged-prvs", tagged("user@example.com"), want="tagged")
sv("skip-tagged-other-type", "btv1=abc123=user@example.com", want="tagged")
sv("skip-tagged-shape", "a=b=c@example.com", want="tagged")
sv("skip-tagged-draft00", "prvs=user/0123abcdef@example.com", want="tagged")
sv("skip-tagged-subaddress", "user+prvs=0123abcdef@example.com", want="tagged")
sv("skip-order-quoted-before-srs", '"SRS0=HHH=TT=example.org=user"@forwarder.example', want="quoted")
sv("skip-order-srs-before-too-long", "SRS0=HHH=TT=example.org=" + "u" * 40 + "@forwarder.example",
   want="srs")
sv("skip-order-tagged-before-too-long", "btv1=abc123=" + "u" * 40 + "@example.com", want="tagged")

# ---------------------------------------------------------------------------------------------
# Verification vectors.

for i in range(10):  # every key id, with a keyring holding all ten keys
    vv("key-id-%d" % i, tagged("user@example.com", key=i), keys=range(10))

for k in ("65-byte", "100-byte", "high-bytes", "trailing-newline"):  # the others: sign.json
    vv("key-" + k, tagged("user@example.com", key=k, key_id=3), keys={3: k})

vv("case-mixed-exact", tagged("John.Doe@Example.COM"), match="exact")
vv("case-changed-in-transit-folded", tagged("john.doe@example.com").replace("john.doe@example.com",
   "John.Doe@Example.COM"), match="folded")
vv("case-changed-in-transit-strict", tagged("john.doe@example.com").replace("john.doe@example.com",
   "John.Doe@Example.COM"), strict=True, want="bad-signature")
vv("case-domain-uppercased-folded", tagged("user@example.com").replace("example.com", "EXAMPLE.COM"),
   match="folded")
vv("case-mixed-signed-lowercased-in-transit", tagged("John.Doe@Example.COM").replace("John.Doe@Example.COM",
   "john.doe@example.com"), want="bad-signature")
upper = "PRVS=" + tagged("user@example.com")[5:15].upper() + "=user@example.com"
vv("case-uppercase-prvs-and-hex", upper, match="exact")
vv("case-utf8-folded", tagged("jürgen@example.com").replace("jürgen@example.com", "Jürgen@EXAMPLE.com"),
   match="folded")

vv("local-verp", tagged("list-bounces+user=example.org@lists.example.com"))
vv("local-non-alnum-tag-type", tagged("bounce-123=user=example.org@lists.example.com"))
quoted = '"john smith"@example.com'   # Exim writes prvs=TAG="quoted"@domain; MAC over the quoted form
vv("local-quoted-exim-style", "prvs=%s=%s" % (make_tag(KEYS[0], 0, (day_number("2025-03-14") + 7) % 1000,
   quoted), quoted))
vv("utf8-local", tagged("jürgen@example.com"))

w20 = tagged("user@example.com", date="2024-10-03")  # expiry 006
vv("wrap-20000-signing-day", w20, date="2024-10-03")
vv("wrap-20000-across-wrap", w20, date="2024-10-05")
vv("wrap-20000-last-valid-day", w20, date="2024-10-10")
vv("wrap-20000-first-expired-day", w20, date="2024-10-11", want="expired")
vv("wrap-20000-day-before-signing", w20, date="2024-10-02", want="expired")   # d = L + 1
w20z = tagged("user@example.com", date="2024-09-27")  # expiry 000
vv("wrap-20000-expiry-000-last-valid-day", w20z, date="2024-10-04")
vv("wrap-20000-expiry-000-first-expired-day", w20z, date="2024-10-05", want="expired")
w21 = tagged("bob@example.org", date="2027-06-30", lifetime=30)  # expiry 029
vv("wrap-21000-last-valid-day-lifetime-30", w21, date="2027-07-30", max_lifetime=30)
vv("wrap-21000-first-expired-day-lifetime-30", w21, date="2027-07-31", max_lifetime=30, want="expired")
vv("wrap-21000-lifetime-30-site-max-7", w21, date="2027-06-30", want="expired")
w22 = tagged("carol@example.net", date="2030-03-26", lifetime=1)  # expiry 000
vv("wrap-22000-last-valid-day-lifetime-1", w22, date="2030-03-27", max_lifetime=1)
vv("wrap-22000-first-expired-day-lifetime-1", w22, date="2030-03-28", max_lifetime=1, want="expired")
far = "prvs=%s=user@example.com" % make_tag(KEYS[0], 0, (day_number("2025-03-14") + 500) % 1000,
                                              "user@example.com")
vv("far-future-expiry", far, want="expired")

base = tagged("user@example.com")  # signed 2025-03-14, key id 0, lifetime 7
vv("tampered-key-id-no-key", set_tag(base, lambda t: "5" + t[1:]), want="unknown-key")
vv("tampered-key-id-other-key", set_tag(base, lambda t: "1" + t[1:]), keys=(0, 1), want="bad-signature")
vv("tampered-expiry-in-window", set_tag(base, lambda t: t[0] + "%03d" % ((int(t[1:4]) - 1) % 1000) + t[4:]),
   want="bad-signature")
vv("tampered-expiry-out-of-window", set_tag(base, lambda t: t[0] + "%03d" % ((int(t[1:4]) + 1) % 1000) + t[4:]),
   want="expired")
vv("tampered-mac", set_tag(base, lambda t: t[:9] + flip(t[9])), want="bad-signature")
vv("tampered-local-part", base.replace("=user@", "=usex@"), want="bad-signature")
vv("tampered-domain", base.replace("example.com", "example.net"), want="bad-signature")
vv("order-unknown-key-before-expired", set_tag(base, lambda t: "5" + t[1:]), date="2025-04-30",
   want="unknown-key")
vv("order-expired-before-bad-signature", set_tag(base, lambda t: t[:9] + flip(t[9])), date="2025-04-30",
   want="expired")

b = base[5:15]
vv("draft00-valid", "prvs=user/%s@example.com" % b)
vv("draft00-slash-in-local", "prvs=a/b/%s@example.com" % tagged("a/b@example.com")[5:15])
vv("draft00-tampered-mac", "prvs=user/%s@example.com" % (b[:9] + flip(b[9])), want="bad-signature")
vv("subaddress-plus-valid", tagged("user@example.com", sub="+"))
vv("subaddress-plus-in-local", tagged("user+folder@example.com", sub="+"))
vv("subaddress-uppercase-prvs", "user+PRVS=%s@example.com" % b.upper())
vv("subaddress-minus-valid", tagged("user@example.com", sub="-"), delim="-")
vv("subaddress-minus-with-plus-delimiter", tagged("user@example.com", sub="-"), want="missing")
vv("subaddress-tampered-mac", "user+prvs=%s@example.com" % (b[:9] + flip(b[9])), want="bad-signature")

vv("malformed-short-tag", "prvs=0123abcde=user@example.com", want="malformed")
vv("malformed-long-tag", "prvs=0123abcdef0=user@example.com", want="malformed")
vv("malformed-non-digit-key-id", "prvs=a123abcdef=user@example.com", want="malformed")
vv("malformed-non-digit-expiry", "prvs=01x3abcdef=user@example.com", want="malformed")
vv("malformed-non-hex-mac", "prvs=0123abcdeg=user@example.com", want="malformed")
vv("malformed-empty-loc-core", "prvs=0123abcdef=@example.com", want="malformed")
vv("malformed-prvs-nothing-after", "prvs=@example.com", want="malformed")
vv("malformed-prvs-only-no-at", "prvs=", want="malformed")
vv("malformed-no-at", "prvs=0123abcdef=user", want="malformed")
vv("malformed-draft00-non-hex-mac", "prvs=user/0123abcdeg@example.com", want="malformed")
vv("malformed-draft00-empty-loc-core", "prvs=/0123abcdef@example.com", want="malformed")
vv("malformed-subaddress-non-hex-mac", "user+prvs=0123abcdeg@example.com", want="malformed")
vv("malformed-subaddress-non-ascii-in-tag", "user+prvs=0123abcdü@example.com", want="malformed")  # octets

vv("missing-plain", "user@example.com", want="missing")
vv("missing-srs", "SRS0=HHH=TT=example.org=user@forwarder.example", want="missing")
vv("missing-empty", "", want="missing")
vv("missing-no-at", "user", want="missing")
vv("missing-prvs-not-at-start", "xprvs=0123abcdef=user@example.com", want="missing")
vv("missing-subaddress-short-tag", "user+prvs=0123abcde@example.com", want="missing")

# ---------------------------------------------------------------------------------------------


def write(filename, description, vectors):
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names"
    doc = {"description": description, "vectors": sorted(vectors, key=lambda v: v["name"])}
    with open(os.path.join(OUT_DIR, filename), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


write("sign.json", "BATV prvs signing known-answer vectors. key_hex is the raw key; date is the "
      "UTC signing date; expected is the signed address, or empty when skip names why the address "
      "is left unsigned. Generated by generate.py; see README.md.", SIGN)
write("verify.json", "BATV prvs verification known-answer vectors. keys is the keyring; date is "
      "the UTC date of verification; the remaining fields are the expected result. Generated by "
      "generate.py; see README.md.", VERIFY)
print("wrote %d signing and %d verification vectors" % (len(SIGN), len(VERIFY)))
