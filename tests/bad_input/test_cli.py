"""Wrong use of ``hf-metatransfer``: one message naming the problem and the fix, exit status 2, no traceback
(unless asked for with ``--debug`` or ``HF_METATRANSFER_DEBUG=1``), and nothing written on refusal.

Every refusal here comes before a model is loaded; most run ``main`` in-process, three as the real command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_metatransfer.cli import DEBUG_ENV, DEBUG_HINT, is_user_error, main
from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.meta import MetaTrainingConfig
from hf_metatransfer.recipes import meta_train
from hf_metatransfer.recipes.finetune import ModelArguments
from hf_metatransfer.recipes.meta_train import EpisodeArguments
from tests.bad_input.conftest import unchanged
from tests.hub_server import hub_fixture  # noqa: F401 - the fixture 'hub'

META = (ModelArguments, EpisodeArguments, MetaTrainingConfig)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so a default output_dir (``outputs/...``) written by mistake is seen."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def refused_cli(capsys, *argv: str, folders: tuple[Path, ...] = ()) -> str:
    """Run ``hf-metatransfer *argv``: it must exit 2 leaving ``folders`` as they were; its stderr."""
    with unchanged(*folders), pytest.raises(SystemExit) as raised:
        main(list(argv))
    assert raised.value.code == 2, raised.value.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def error_line(err: str, prog: str = "hf-metatransfer meta-train") -> str:
    """The one ``<prog>: error:`` line of stderr."""
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_command(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in a fresh process (the exit status and stderr a user sees)."""
    return subprocess.run(
        [sys.executable, "-m", "hf_metatransfer.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=Path(__file__).parents[2],
        timeout=300,
    )


# --- flags -------------------------------------------------------------------------------------------------


def test_misspelt_flag_names_the_closest_option_as_a_real_command(tmp_path):
    done = run_command("meta-train", "--inner_stepz", "2", "--output_dir", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Unknown option '--inner_stepz' (did you mean '--inner_steps'?)" in done.stderr
    assert "--help" in done.stderr and not (tmp_path / "out").exists()


def test_an_abbreviated_flag_is_not_taken_for_the_full_one(capsys, tmp_path):
    err = refused_cli(capsys, "meta-train", "--inner_step", "2", folders=(tmp_path,))
    assert "Unknown option '--inner_step' (did you mean '--inner_steps'?)" in error_line(err)


def test_several_misspelt_flags_are_all_named(refused):
    with refused(SystemExit, "Unknown options '--n_wya' (did you mean '--n_way'?)", "'--k_shto'"):
        parse_args(META, ["--n_wya", "3", "--k_shto=2"])


def test_a_value_without_its_flag_suggests_the_flag(capsys):
    err = refused_cli(capsys, "meta-train", "n_way", "3")
    assert "Unexpected argument 'n_way' (did you mean '--n_way'?)" in error_line(err)
    assert "every value follows its --option" in err


@pytest.mark.parametrize("value", ["five", "2.5"])
def test_a_non_integer_where_an_integer_is_expected(capsys, value):
    err = refused_cli(capsys, "meta-train", "--n_way", value)
    assert f"argument --n_way/--n-way: invalid int value: '{value}'" in error_line(err)


@pytest.mark.parametrize("value", ["five", "2.5"])
def test_the_yaml_route_gives_the_same_invalid_int_message(refused, tmp_path, value):
    config = write(tmp_path / "c.yaml", f"n_way: {value}\n")
    with refused(SystemExit, f"argument --n_way/--n-way: invalid int value: '{value}'"):
        parse_args(META, ["--config", str(config)])


# --- the YAML config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"), [("- n_way: 5\n- k_shot: 2\n", "list"), ("just some words\n", "str"), ("5\n", "int")]
)
def test_a_yaml_that_is_not_a_mapping(capsys, tmp_path, text, kind):
    config = write(tmp_path / "c.yaml", text)
    err = refused_cli(capsys, "meta-train", "--config", str(config), folders=(tmp_path,))
    assert f"--config {config} holds a {kind}, not a mapping of options" in error_line(err)
    assert "write one `option: value` a line (`n_way: 5`)" in err


def test_a_missing_yaml_file(capsys, tmp_path):
    err = refused_cli(capsys, "meta-train", "--config", str(tmp_path / "nope.yaml"), folders=(tmp_path,))
    assert f"--config {tmp_path / 'nope.yaml'} does not exist: give the path of a YAML file" in error_line(
        err
    )


def test_a_folder_given_as_the_yaml_file(refused, tmp_path):
    with refused(SystemExit, f"--config {tmp_path} is a folder: give the path of a YAML file"):
        parse_args(META, [f"--config={tmp_path}"])


def test_invalid_yaml_syntax_names_the_line(capsys, tmp_path):
    config = write(tmp_path / "c.yaml", "n_way: 5\nk_shot: [2, 3\n")
    err = refused_cli(capsys, "meta-train", "--config", str(config), folders=(tmp_path,))
    line = error_line(err)
    assert f"--config {config} is not valid YAML" in line and "line 3" in line
    assert "fix the syntax; each line is `option: value`" in line


def test_config_without_a_path(refused):
    with refused(SystemExit, "--config needs a path to a YAML file: --config x.yaml"):
        parse_args(META, ["--n_way", "3", "--config"])


def test_an_unknown_yaml_key_of_meta_train_names_the_closest_option(capsys, tmp_path):
    config = write(tmp_path / "c.yaml", "inner_step: 2\nalgoritm: maml\n")
    err = refused_cli(capsys, "meta-train", "--config", str(config), folders=(tmp_path,))
    line = error_line(err)
    assert f"Unknown strategy or option in {config}: 'inner_step' (did you mean 'inner_steps'?)" in line
    assert "'algoritm' (did you mean 'algorithm'?)" in line and "Run with --help for every option" in line


# --- recipes and models ------------------------------------------------------------------------------------


def test_an_unknown_recipe_suggests_the_closest_and_lists_them(capsys):
    err = refused_cli(capsys, "meta_train", "--n_way", "3")
    assert (
        "unknown recipe 'meta_train' (did you mean 'meta-train'?): use one of quickstart, finetune"
        in error_line(err, "hf-metatransfer")
    )
    assert "usage: hf-metatransfer <recipe>" in err


@pytest.mark.parametrize("recipe", ["finetune", "meta-train", "lecture"])
def test_a_missing_local_model_folder_says_so_and_writes_nothing(capsys, tmp_path, recipe):
    out = tmp_path / "out"
    err = refused_cli(capsys, recipe, "--model_name_or_path", "./no-such-model", "--output_dir", str(out),
                      folders=(tmp_path,))  # fmt: skip
    line = error_line(err, f"hf-metatransfer {recipe}")
    assert "Model folder ./no-such-model does not exist: give an existing folder (with config.json)" in line
    assert "or a Hub id such as 'sentence-transformers/all-MiniLM-L6-v2'" in line
    assert DEBUG_HINT in err and "Repo id must be" not in err


@pytest.mark.parametrize(
    "path", ["/no/such/model", "../no-such-model", "~/no-such-model", "a/b/c", "model/", r"C:\m"]
)
def test_every_path_form_of_a_missing_model_is_refused(refused, path):
    with refused(FileNotFoundError, "does not exist: give an existing folder"):
        ModelArguments(model_name_or_path=path)


def test_hub_ids_and_existing_folders_are_left_to_transformers(tmp_path):
    (tmp_path / "model").mkdir()
    for name in (
        "owner/name",
        "bert-base-uncased",
        "embedded",
        "embedded-multilingual",
        "model",
        str(tmp_path),
    ):
        assert ModelArguments(model_name_or_path=name).model_name_or_path == name


def test_a_refused_push_run_creates_no_hub_repo(capsys, tmp_path, hub):
    refused_cli(capsys, "meta-train", "--model_name_or_path", "./missing", "--push_to_hub", "true",
                "--hub_model_id", "tester/never", "--output_dir", str(tmp_path / "out"), folders=(tmp_path,))  # fmt: skip
    assert hub.repos == {} and hub.requests == []


# --- user errors of the recipes, bugs, --debug -------------------------------------------------------------


def test_a_recipes_own_validation_error_is_one_message(capsys, tmp_path):
    err = refused_cli(capsys, "meta-train", "--algorithm", "mamlx", folders=(tmp_path,))
    assert err.splitlines() == [
        "hf-metatransfer meta-train: error: Unknown algorithm 'mamlx': use one of ('maml', 'fomaml', 'reptile', "
        "'anil', 'protonets', 'metasgd').",
        DEBUG_HINT,
    ]


def test_debug_flag_shows_the_error_and_is_not_passed_to_the_recipe(monkeypatch, capsys):
    seen = []

    def cli(argv):
        seen.append(argv)
        raise ValueError("n_way must be at least 2")

    monkeypatch.setattr(meta_train, "cli", cli)
    with pytest.raises(ValueError, match="n_way must be at least 2"):
        main(["meta-train", "--n_way", "1", "--debug"])
    assert seen == [["--n_way", "1"]] and capsys.readouterr().err == ""


def test_debug_environment_variable_shows_the_error(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="Unknown algorithm 'mamlx'"):
        main(["meta-train", "--algorithm", "mamlx"])


@pytest.mark.parametrize("env", [{}, {DEBUG_ENV: "1"}], ids=["plain", "debug"])
def test_the_traceback_only_with_debug_as_a_real_command(env):
    done = run_command("meta-train", "--algorithm", "mamlx", env=env)
    if env:
        assert done.returncode == 1 and "Traceback" in done.stderr
        assert "ValueError: Unknown algorithm 'mamlx'" in done.stderr
    else:
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "hf-metatransfer meta-train: error: Unknown algorithm 'mamlx': use one of" in done.stderr


@pytest.mark.parametrize(
    "bug", [RuntimeError("boom"), KeyError("text"), OSError("disk on fire"), ImportError("x")]
)
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    def cli(argv):
        raise bug

    monkeypatch.setattr(meta_train, "cli", cli)
    with pytest.raises(type(bug)):
        main(["meta-train"])


def test_interrupt_is_one_line_and_status_130(monkeypatch, capsys):
    def cli(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(meta_train, "cli", cli)
    with pytest.raises(SystemExit) as raised:
        main(["meta-train"])
    assert raised.value.code == 130 and capsys.readouterr().err == "hf-metatransfer meta-train: interrupted\n"


def test_the_user_errors_are_an_explicit_list():
    from huggingface_hub.errors import OfflineModeIsEnabled

    from hf_metatransfer.hub.publish import PublishError

    user = [
        ValueError("x"),
        FileNotFoundError("x"),
        FileExistsError("x"),
        NotADirectoryError("x"),
        PublishError("push failed"),
        OfflineModeIsEnabled("offline"),
        ImportError("method='optuna' needs optuna: pip install 'hf-metatransfer[search]'."),
        OSError("someone/x is not a local folder and is not a valid model identifier listed on ..."),
        OSError("Can't load tokenizer for 'someone/x'."),
    ]
    bugs = [
        KeyError("text"),
        RuntimeError("x"),
        TypeError("x"),
        ImportError("cannot import name"),
        OSError("x"),
    ]
    assert all(is_user_error(e) for e in user) and not any(is_user_error(e) for e in bugs)
