"""``herald broker setup`` builds ``rabbitmqctl`` lines no password or user name can break.

rabbitmqctl parses every argument that starts with ``-`` as an option, so ``add_user NAME -KF0…`` failed
with "Invalid options for this command" (tests/integration/test_broker_users.py runs the lines for real).
"""

from __future__ import annotations

from herald_ops.broker import ROLES, commands, new_password, password_changes

USERS = {role: f"herald-{role}" for role in ROLES}
OPTIONS_WITH_A_VALUE = {"-p"}


def positional_arguments(line: list[str]) -> list[str]:
    """What rabbitmqctl reads as arguments: everything after ``--``, and before it whatever is neither an
    option nor an option's value."""
    if "--" in line:
        end = line.index("--")
        return [line[0], *line[end + 1 :]]
    arguments, skip = [], False
    for argument in line:
        if skip:
            skip = False
        elif argument.startswith("-"):
            skip = argument in OPTIONS_WITH_A_VALUE
        else:
            arguments.append(argument)
    return arguments


def test_a_password_starting_with_a_dash_stays_an_argument() -> None:
    dashed = {role: f"-KF0{role}" for role in ROLES}
    lines = commands("/", "herald", USERS, dashed) + password_changes(USERS, dashed)
    for line in lines:
        if line[0] in {"add_user", "change_password"}:
            role = line[-2].removeprefix("herald-")
            assert positional_arguments(line) == [line[0], USERS[role], dashed[role]], line


def test_permissions_name_the_user_and_the_three_regexes() -> None:
    for line in commands("/", "herald", USERS, {}):
        assert line[:3] == ["set_permissions", "-p", "/"]
        assert len(positional_arguments(line)) == 5, line  # command, user, configure, write, read


def test_generated_passwords_never_start_with_a_dash() -> None:
    # One in 64 URL-safe base64 passwords started with "-": 2,000 samples catch that alphabet for sure.
    passwords = [new_password() for _ in range(2000)]
    assert not [password for password in passwords if password.startswith("-")]
    assert len(set(passwords)) == len(passwords)
    assert min(len(password) for password in passwords) >= 32


def test_only_producer_declares_lets_the_producer_configure_the_events_exchange() -> None:
    strict = {
        line[4]: line[5:] for line in commands("/", "herald", USERS, {}) if line[0] == "set_permissions"
    }
    declaring = {
        line[4]: line[5:]
        for line in commands("/", "herald", USERS, {}, producer_declares=True)
        if line[0] == "set_permissions"
    }
    producer = USERS["producer"]
    assert strict[producer] == ["^$", r"^herald\.events$", "^$"]
    assert declaring[producer] == [r"^herald\.events$", r"^herald\.events$", "^$"]
    # Nothing else changes.
    assert {user: rules for user, rules in declaring.items() if user != producer} == {
        user: rules for user, rules in strict.items() if user != producer
    }
