"""The rules as pure functions (twofa.policy, twofa.crypto): examples and Hypothesis properties.

No server here: these run in milliseconds and explore inputs the end-to-end tests never type.
"""

from __future__ import annotations

import os
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from twofa import crypto
from twofa.config import Settings
from twofa.crypto import CODE_ALPHABET, CODE_LENGTH, Keyring, normalize_code
from twofa.policy import (
    MAX_EMAIL_LENGTH,
    ActivationFields,
    ActivationRefused,
    Policy,
    RuleViolation,
    check_activation,
    check_email_shape,
    check_pin,
    check_pin_confirmation,
    check_pin_shape,
    check_two_factor_email,
    effective_state,
    normalize_email,
    password_block_seconds,
)
from twofa.vocabulary import TwoFactorState

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend

#: R2, written out again here rather than imported, so a change to the code cannot hide.
ALLOWED = set(string.ascii_letters + string.digits + "@\\._-")
ALLOWED_IN_PARTS = "".join(sorted(ALLOWED - {"@"}))
PEPPER = b"test-pepper-for-unit-tests"


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(PEPPER)


# -- R2: the characters of an email the second factor accepts

email_parts = st.text(alphabet=ALLOWED_IN_PARTS, min_size=1, max_size=60)


def first_refused(email: str) -> str | None:
    """The first character of ``email`` R2 refuses, as typed (never trimmed nor lowercased)."""
    return next((c for c in email if c not in ALLOWED), None)


@given(local=email_parts, domain=email_parts)
@example(local="a", domain="b")
@example(local="Back\\Slash", domain="EXAMPLE.COM")
@example(local="-._", domain="_-.")
def test_r2_accepts_every_email_of_allowed_characters(local: str, domain: str) -> None:
    email = f"{local}@{domain}"
    assert check_two_factor_email(email) == email  # kept as typed


def refused_characters() -> st.SearchStrategy[str]:
    """Characters outside the set that are not whitespace (refused as a bad shape instead)."""
    return st.characters(codec="utf-8").filter(
        lambda c: c not in ALLOWED and not c.isspace() and c != "@"
    )


@given(
    local=email_parts,
    domain=email_parts,
    bad=refused_characters(),
    more=st.lists(
        st.characters(codec="utf-8").filter(lambda c: not c.isspace() and c != "@"), max_size=20
    ),
    where=st.sampled_from(["local_start", "local_end", "domain_start", "domain_end"]),
)
@example(local="a", domain="b.c", bad="+", more=[], where="local_end")
@example(local="a", domain="b.c", bad="\u00e9", more=[], where="local_end")
@example(local="a", domain="b.c", bad='"', more=[], where="local_start")
@example(local="a", domain="b.c", bad="\u00c9", more=["+"], where="local_start")
@example(local="a", domain="b.c", bad="\u0130", more=[], where="domain_end")
@example(local="a", domain="b.c", bad="\u0661", more=[], where="domain_start")
@settings(suppress_health_check=[HealthCheck.filter_too_much])
def test_r2_refuses_any_other_character_naming_it(
    local: str, domain: str, bad: str, more: list[str], where: str
) -> None:
    extra = bad + "".join(more)
    if where == "local_start":
        local = extra + local
    elif where == "local_end":
        local += extra
    elif where == "domain_start":
        domain = extra + domain
    else:
        domain += extra
    email = f"{local}@{domain}"
    assert len(normalize_email(email)) <= MAX_EMAIL_LENGTH
    expected = first_refused(email)
    assert expected is not None
    with pytest.raises(RuleViolation) as refused:
        check_two_factor_email(email, field="new_email")
    assert refused.value.code == "unsupported_email", (email, refused.value.code)
    assert refused.value.field == "new_email"
    named = refused.value.details["character"]
    assert named == expected, (email, named)
    assert repr(named) in refused.value.message


@given(st.text(max_size=80))
def test_r2_never_accepts_a_character_outside_the_set(email: str) -> None:
    """Whatever the input, an accepted email is made only of the allowed characters."""
    try:
        accepted = check_two_factor_email(email)
    except RuleViolation as refusal:
        assert refusal.code in ("unsupported_email", "invalid_email")
        if refusal.code == "unsupported_email":
            named = refusal.details["character"]
            assert named == first_refused(email)
        return
    assert set(accepted) <= ALLOWED
    assert accepted.count("@") == 1


@pytest.mark.parametrize(
    ("email", "named"),
    [
        ("jane doe@example.com", " "),
        (" jane@example.com", " "),
        ("jane@example.com\t", "\t"),
        ("jane@example.com\u00a0", "\u00a0"),
        ("\u2003jane@example.com", "\u2003"),
    ],
)
def test_r2_refuses_a_space_inside_or_around_naming_it(email: str, named: str) -> None:
    """docs/rules.md R2 lists the space among the characters refused "with an error naming the
    character", judging the address as typed: one around it is not trimmed away."""
    with pytest.raises(RuleViolation) as refused:
        check_two_factor_email(email)
    assert refused.value.code == "unsupported_email", refused.value.code
    assert refused.value.details.get("character") == named


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("  Jane.Doe@Example.com\t", "Jane.Doe@Example.com"),
        ("\njane@example.com ", "jane@example.com"),
    ],
)
def test_r2_registration_trims_only_the_whitespace_around_the_address(
    typed: str, stored: str
) -> None:
    """What is stored is what R2 judges at enable: trimmed, never lowercased or otherwise
    changed, so it passes where the same address typed at activation with a space would not."""
    assert check_email_shape(typed) == stored
    assert check_two_factor_email(stored) == stored


@pytest.mark.parametrize("typed", ["jane doe@example.com", "jane@exa\tmple.com"])
def test_r2_registration_refuses_whitespace_inside_the_address(typed: str) -> None:
    with pytest.raises(RuleViolation) as refused:
        check_email_shape(typed)
    assert refused.value.code == "invalid_email", refused.value.code


def test_r2_refuses_the_kelvin_sign() -> None:
    """U+212A KELVIN SIGN is not in the set, yet it lowercases to an ASCII "k"."""
    with pytest.raises(RuleViolation) as refused:
        check_two_factor_email("\u212aate@example.com")
    assert refused.value.code == "unsupported_email"
    assert refused.value.details["character"] == "\u212a"


# -- R6: the shape of a PIN


@given(
    pin=st.one_of(
        st.text(alphabet="0123456789", max_size=10),
        st.text(
            alphabet="0123456789\u0661\u0662\u0663\u0664\u0665\u0660\u0966\u0967\u0968\u0969\u096a",
            max_size=10,
        ),
        st.text(max_size=10),
    ),
    same=st.booleans(),
    other=st.text(alphabet="0123456789 ", max_size=10),
)
@example(pin="1234", same=True, other="")
@example(pin="12345678", same=True, other="")
@example(pin="123", same=True, other="")
@example(pin="123456789", same=True, other="")
@example(pin="1111", same=True, other="")
@example(pin="00000000", same=True, other="")
@example(pin="1112", same=True, other="")
@example(pin="\u0661\u0662\u0663\u0664", same=True, other="")
@example(pin="\uff11\uff12\uff13\uff14", same=True, other="")
@example(pin="1234\n", same=True, other="")
@example(pin=" 1234", same=True, other="")
@example(pin="1234", same=False, other="1235")
@example(pin="1234", same=False, other="1234 ")
def test_r6_pin_accepted_iff_4_to_8_ascii_digits_two_different_and_confirmed(
    pin: str, same: bool, other: str
) -> None:
    confirmation = pin if same else other
    well_formed = 4 <= len(pin) <= 8 and all(c in "0123456789" for c in pin) and len(set(pin)) >= 2
    should_accept = well_formed and confirmation == pin
    if should_accept:
        assert check_pin(pin, confirmation) == pin
        return
    with pytest.raises(RuleViolation) as refused:
        check_pin(pin, confirmation)
    if not well_formed:
        assert (refused.value.field, refused.value.code) == ("pin", "invalid_pin_format")
    else:
        assert (refused.value.field, refused.value.code) == ("pin_confirmation", "pin_mismatch")


@given(pin=st.text(max_size=10), confirmation=st.text(max_size=10))
@example(pin="12", confirmation="12")
def test_r6_the_confirmation_repeats_the_pin_whatever_the_pin(pin: str, confirmation: str) -> None:
    """Judged on its own, so an activation form reports a wrong PIN and a wrong repeat at once."""
    if confirmation == pin:
        assert check_pin_confirmation(pin, confirmation) == confirmation
        return
    with pytest.raises(RuleViolation) as refused:
        check_pin_confirmation(pin, confirmation)
    assert (refused.value.field, refused.value.code) == ("pin_confirmation", "pin_mismatch")


@given(pin=st.text(max_size=10))
@example(pin="\u0661\u0662\u0663\u0664")
@example(pin="1234\n")
@example(pin="1111")
def test_s2_a_pin_typed_at_login_is_4_to_8_ascii_digits(pin: str) -> None:
    """Judged before the PIN is checked: a malformed one is refused, not a wrong try (S2)."""
    if 4 <= len(pin) <= 8 and all(c in "0123456789" for c in pin):
        assert check_pin_shape(pin) == pin
        return
    with pytest.raises(RuleViolation) as refused:
        check_pin_shape(pin)
    assert (refused.value.field, refused.value.code) == ("pin", "invalid_pin_format")


@given(
    stored=st.sampled_from(list(TwoFactorState)),
    until=st.none() | st.integers(min_value=-3600, max_value=3600),
)
def test_s2_a_lock_whose_time_has_passed_reads_active(stored: str, until: int | None) -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    locked_until = None if until is None else now + timedelta(seconds=until)
    state = effective_state(stored, locked_until, now)
    over = stored == TwoFactorState.LOCKED and until is not None and until <= 0
    assert state is (TwoFactorState.ACTIVE if over else TwoFactorState(stored))


def test_r6_an_activation_names_every_wrong_field_at_once_in_field_order() -> None:
    with pytest.raises(ActivationRefused) as refused:
        check_activation("12a4", "9999", "   ", None, "bad address")
    fields = [(v.field, v.code) for v in refused.value.violations]
    assert [field for field, _ in fields] == ["pin", "pin_confirmation", "seal", "email"]
    assert ("seal", "seal_required") in fields
    for no_email in (None, ""):
        one = check_activation("2468", "2468", "  my seal  ", "laptop", no_email)
        assert one == ActivationFields(seal="my seal", device_name="laptop", email=None)
    with pytest.raises(ActivationRefused) as refused:  # R2: typed spaces are refused, not dropped
        check_activation("2468", "2468", "my seal", "laptop", "  ")
    assert [(v.field, v.code) for v in refused.value.violations] == [("email", "unsupported_email")]


def test_r6_unicode_digits_are_refused() -> None:
    for pin in (
        "\u0661\u0662\u0663\u0664",
        "\u0661\u0662\u0663\u0664\u0665\u0666",
        "\u0967\u0968\u0969\u096a",
        "\uff11\uff12\uff13\uff14",
        "\U0001d7cf\U0001d7d0\U0001d7d1\U0001d7d2",
    ):
        assert pin.isdigit()
        with pytest.raises(RuleViolation):
            check_pin(pin, pin)


# -- S2: how long the primary password is blocked


def test_s2_password_block_examples() -> None:
    assert [password_block_seconds(n) for n in range(4)] == [0, 0, 0, 0]
    assert password_block_seconds(4) == 60
    assert password_block_seconds(8) == 120
    assert password_block_seconds(12) == 180
    assert password_block_seconds(40) == 600
    assert password_block_seconds(44) == 600
    assert password_block_seconds(4000) == 600


@given(st.integers(min_value=0, max_value=100_000))
def test_s2_password_block_property(failures: int) -> None:
    block = password_block_seconds(failures)
    assert 0 <= block <= 600
    if failures < 4:
        assert block == 0
    elif failures % 4 == 0:
        # 1 minute at 4 failures, 1 more for every 4 further failures, 10 minutes at most
        assert block == min(60 * (failures // 4), 600)
    else:
        assert block == 0  # no new block between two multiples of 4


# -- the settings' defaults (docs/api.md "Settings")


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TWOFA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env or data dir of the project is read
    settings = Settings()
    assert settings.auto_logout_seconds == 10
    assert settings.code_ttl_seconds == 900
    assert settings.pin_lock_seconds == 900
    assert settings.api_port == 8000
    assert settings.dashboard_port == 8501
    assert settings.temporal_port == 7233
    assert settings.smtp_port == 1025
    assert settings.data_dir == Path(".data")
    assert settings.temporal_address is None and settings.embedded_temporal
    assert settings.service_token is None
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("/.data/twofa.db")
    assert list(tmp_path.iterdir()) == []  # reading settings writes nothing
    policy = Policy()
    assert (policy.auto_logout_seconds, policy.code_ttl_seconds, policy.pin_lock_seconds) == (
        10,
        900,
        900,
    )
    assert (policy.max_code_failures, policy.max_pin_failures) == (5, 5)
    assert policy.locks_before_admin_unlock == 3


def test_settings_come_from_twofa_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOFA_API_PORT", "9001")
    monkeypatch.setenv("TWOFA_PIN_LOCK_SECONDS", "2.5")
    monkeypatch.setenv("TWOFA_DATA_DIR", "/tmp/somewhere")
    settings = Settings()
    assert settings.api_port == 9001
    assert settings.pin_lock_seconds == 2.5
    assert settings.data_dir == Path("/tmp/somewhere")


def test_a_workflow_policy_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source for each default, and what is set reaches the workflow's snapshot."""
    for name in list(os.environ):
        if name.upper().startswith("TWOFA_"):
            monkeypatch.delenv(name)
    assert Settings().policy == Policy()
    policy = Settings(auto_logout_seconds=2, code_ttl_seconds=3, pin_lock_seconds=4).policy
    assert (policy.auto_logout_seconds, policy.code_ttl_seconds, policy.pin_lock_seconds) == (
        2,
        3,
        4,
    )
    assert Settings(history_event_limit=60).policy.history_event_limit == 60


def test_a_child_process_reads_the_settings_it_is_handed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TWOFA_SMTP_HOST", "a.parent.setting.example")
    given = Settings(
        data_dir=tmp_path,
        api_port=9002,
        auto_logout_seconds=1.5,
        smtp_security="tls",
        smtp_username="relay",
        smtp_password="relay secret",
    )
    env = given.environment(pin_lock_seconds=7)
    assert env["TWOFA_SMTP_HOST"] == "a.parent.setting.example"  # set before: read, so given
    assert env["TWOFA_SMTP_PASSWORD"] == "relay secret"
    for name in [n for n in os.environ if n.startswith("TWOFA_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump() == given.model_copy(update={"pin_lock_seconds": 7}).model_dump()
    only = given.environment(["api_port", "database_url"])
    assert only["TWOFA_API_PORT"] == "9002"
    assert not {"TWOFA_DATABASE_URL", "TWOFA_DATA_DIR"} & set(only)


# -- S1: activation codes

enrollments = st.uuids().map(str)
numbers = st.integers(min_value=1, max_value=10_000)


def test_s1_code_alphabet_is_crockford_base32() -> None:
    assert len(CODE_ALPHABET) == len(set(CODE_ALPHABET)) == 32
    assert set(CODE_ALPHABET) == set(string.digits + string.ascii_uppercase) - set("ILOU")
    assert CODE_LENGTH == 8
    assert 32**CODE_LENGTH >= 2**30


@given(enrollment=enrollments, number=numbers)
@settings(max_examples=200)
def test_s1_code_is_deterministic_and_well_formed(
    keyring: Keyring, enrollment: str, number: int
) -> None:
    code = keyring.activation_code(enrollment, number)
    assert code == keyring.activation_code(enrollment, number)
    assert len(code) == CODE_LENGTH
    assert set(code) <= set(CODE_ALPHABET)
    assert normalize_code(code) == code


@given(
    first=st.tuples(enrollments, numbers),
    second=st.tuples(enrollments, numbers),
)
@settings(max_examples=200)
def test_s1_codes_differ_across_numbers_and_enrollments(
    keyring: Keyring, first: tuple[str, int], second: tuple[str, int]
) -> None:
    if first != second:
        assert keyring.activation_code(*first) != keyring.activation_code(*second)


def test_s1_codes_of_one_enrollment_are_all_different(keyring: Keyring) -> None:
    codes = [keyring.activation_code("enrollment-1", n) for n in range(1, 2001)]
    assert len(set(codes)) == len(codes)
    # Every character position uses the whole alphabet: no position is stuck.
    for position in range(CODE_LENGTH):
        assert {code[position] for code in codes} == set(CODE_ALPHABET)


def test_s1_codes_depend_on_the_pepper(keyring: Keyring) -> None:
    other = Keyring(b"another-pepper")
    assert keyring.activation_code("e", 1) != other.activation_code("e", 1)
    assert keyring.code_digest("ABCDEFGH") != other.code_digest("ABCDEFGH")


@given(
    enrollment=enrollments,
    number=numbers,
    lower=st.lists(st.booleans(), min_size=CODE_LENGTH, max_size=CODE_LENGTH),
    separators=st.lists(
        st.sampled_from(["", "", "-", " ", "  ", "\t", "--"]),
        min_size=CODE_LENGTH + 1,
        max_size=CODE_LENGTH + 1,
    ),
)
@example(
    enrollment="e", number=1, lower=[True] * 8, separators=["", "", "", "", "-", "", "", "", ""]
)
def test_s1_normalize_code_accepts_lowercase_spaces_and_dashes(
    keyring: Keyring, enrollment: str, number: int, lower: list[bool], separators: list[str]
) -> None:
    code = keyring.activation_code(enrollment, number)
    typed = separators[0] + "".join(
        (c.lower() if low else c) + sep
        for c, low, sep in zip(code, lower, separators[1:], strict=True)
    )
    assert normalize_code(typed) == code
    assert keyring.code_digest(typed) == keyring.code_digest(code)


def test_s1_normalize_code_examples(keyring: Keyring) -> None:
    assert normalize_code("abcd-efgh") == "ABCDEFGH"
    assert normalize_code(" ab cd ef gh ") == "ABCDEFGH"
    assert normalize_code("0o1il") == "00111"  # Crockford: O is 0, I and L are 1
    assert keyring.code_digest("abcd-efgh") == keyring.code_digest("ABCDEFGH")
    assert keyring.code_digest("ABCDEFGH") != keyring.code_digest("ABCDEFGJ")


@given(code=st.text(alphabet=CODE_ALPHABET, min_size=CODE_LENGTH, max_size=CODE_LENGTH))
def test_s1_code_digest_is_a_keyed_hash(keyring: Keyring, code: str) -> None:
    digest = keyring.code_digest(code)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert code not in digest and code.lower() not in digest
    assert digest == keyring.digest("activation-code", code)
    assert digest != keyring.digest("device", code)  # the purpose is part of the key


# -- S3: secrets kept as argon2id hashes over a pepper


def test_s3_hash_secret_is_peppered_argon2id(keyring: Keyring) -> None:
    stored = keyring.hash_secret("27182818")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "27182818" not in stored
    assert stored != keyring.hash_secret("27182818")  # salted
    assert keyring.verify_secret(stored, "27182818")
    assert not keyring.verify_secret(stored, "27182819")
    assert not Keyring(b"another-pepper").verify_secret(stored, "27182818")
    assert not keyring.verify_secret(None, "27182818")
    assert not keyring.verify_secret("not a hash", "27182818")


def _verifies_plain(stored: str) -> bool:
    try:
        return bool(crypto.ARGON2.verify(stored, "27182818"))
    except Exception:
        return False


def test_s3_plain_argon2_of_the_secret_does_not_verify(keyring: Keyring) -> None:
    assert not _verifies_plain(keyring.hash_secret("27182818"))


def test_s3_seal_is_encrypted_with_the_pepper(keyring: Keyring) -> None:
    sealed = keyring.seal("my seal is a blue heron")
    assert "blue heron" not in sealed
    assert keyring.unseal(sealed) == "my seal is a blue heron"
    with pytest.raises(ValueError):
        Keyring(b"another-pepper").unseal(sealed)


def test_s3_tokens_are_long_and_random() -> None:
    tokens = {crypto.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 for token in tokens)  # 32 random bytes


@given(a=st.text(max_size=40), b=st.text(max_size=40))
def test_same_digest_is_equality(a: str, b: str) -> None:
    assert crypto.same_digest(a, b) == (a == b)
