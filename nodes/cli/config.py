"""Reading a TOML config file (``meshnode run --config FILE``) into ``meshnode run``'s defaults.

Keys are the long flag names of ``meshnode run`` without the leading dashes,
spelled with dashes exactly as on the command line (``auth-secret``, not
``auth_secret``): ``http = 8400``, ``log-level = "DEBUG"``, ``insecure = true``.
A repeatable flag takes an array (``peer = ["10.0.0.6:7400"]``; a single
string is accepted too). Values go through the same conversion as the flag
(the argparse ``type`` and ``choices``), so a bad value is refused as the flag
would refuse it, naming the file and the key.

Precedence: a flag given on the command line overrides the file; a repeatable
flag given on the command line replaces the file's whole list (it does not add
to it). The file's values become parser defaults and the command line is parsed
again. Tables, dotted keys and ``config`` itself are not keys. Python 3.11's
``tomllib`` reads the file.
"""

import argparse
import difflib
import tomllib

NOT_KEYS = ("help", "config")  # run's flags that make no sense in the file


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file (and key)."""


def run_parser(parser):
    """The ``run`` sub-parser of ``nodes.cli.build_parser()``'s parser."""
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise LookupError("the parser has no sub-commands")


def flag_actions(run):
    """{key: argparse action} for every long flag of ``run`` a file may set."""
    keys = {}
    for action in run._actions:
        for option in action.option_strings:
            if option.startswith("--") and option[2:] not in NOT_KEYS:
                keys[option[2:]] = action
    return keys


def _load_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ConfigError(f"{path}: {exc}") from None


def _suggest(key, known):
    dashed = key.replace("_", "-")
    if dashed in known:
        return dashed
    close = difflib.get_close_matches(dashed, list(known), n=1)
    return close[0] if close else None


def _kind(value):
    return {bool: "a boolean", dict: "a table", list: "an array"}.get(type(value), type(value).__name__)


def _convert(path, key, action, value):
    """One TOML scalar through the flag's type and choices, as argparse would convert the flag."""
    where = f"{path}: {key}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string or a number, not {_kind(value)}")
    text = value if isinstance(value, str) else str(value)
    result = text
    if action.type is not None:
        try:
            result = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", repr(action.type)).strip("_").replace("_", " ")
            raise ConfigError(f"{where}: invalid {name} value: {text!r}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(repr(choice) for choice in action.choices)
        raise ConfigError(f"{where}: invalid choice: {result!r} (choose from {choices})")
    return result


def read_config(path, run):
    """{dest: value} from the TOML file at ``path``, checked against the ``run`` parser's flags.

    Repeatable flags come back as lists. Raises ConfigError."""
    data = _load_toml(path)
    known = flag_actions(run)
    values = {}
    for key, value in data.items():
        action = known.get(key)
        if action is None and key in NOT_KEYS:
            raise ConfigError(f"{path}: '{key}' is a command-line flag only, not a key")
        if action is None and isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table '{key}': keys are not grouped in tables, "
                              f"write them at the top of the file")
        if action is None:
            suggestion = _suggest(key, known)
            hint = f"; did you mean '{suggestion}'?" if suggestion else " (keys are the flags of 'meshnode run --help' without '--')"
            raise ConfigError(f"{path}: unknown key '{key}'{hint}")
        if isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else [value]
            values[action.dest] = [_convert(path, key, action, item) for item in items]
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected true or false, not {value!r}")
            values[action.dest] = value if isinstance(action, argparse._StoreTrueAction) else not value
        elif isinstance(action, argparse._StoreAction):
            if isinstance(value, list):
                raise ConfigError(f"{path}: {key}: takes one value, not an array (the flag is not repeatable)")
            values[action.dest] = _convert(path, key, action, value)
        else:
            raise ConfigError(f"{path}: {key}: this flag cannot be set from a file")
    return values


def parse_with_config(parser, argv, path):
    """Parse ``argv`` again with the file's values as ``run``'s defaults: flags on the command
    line win, and a repeatable flag on the command line replaces the file's list.

    On a bad file, prints one line ``meshnode run: error: ...`` and exits with status 2."""
    run = run_parser(parser)
    try:
        values = read_config(path, run)
    except ConfigError as exc:
        run.exit(2, f"{run.prog}: error: {exc}\n")
    appended = {action.dest: action for action in run._actions if isinstance(action, argparse._AppendAction)}
    # An append flag would add to a list default instead of replacing it: those are applied after.
    run.set_defaults(**{dest: value for dest, value in values.items() if dest not in appended})
    args = parser.parse_args(argv)
    for dest, value in values.items():
        if dest in appended and getattr(args, dest) == appended[dest].default:  # not on the command line
            setattr(args, dest, value)
    return args
