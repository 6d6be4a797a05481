"""The trainer end to end on tiny data: model, loader, outputs, test mode, flags, determinism."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from cli import modules_after, run_cli, run_python, stopped_in_epoch
from PIL import Image
from runs import metrics, report_settings, same_weights

import main
from mnist_cnn import runformat
from mnist_cnn.files import RECORD
from mnist_cnn.training import grid, optim


def test_cnn_layers_shapes_and_parameter_counts() -> None:
    model = main.CNN()
    layers = [m for m in model.modules() if not isinstance(m, (main.CNN, torch.nn.Sequential))]
    assert [type(m).__name__ for m in layers] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Linear",
    ]
    counts = [sum(p.numel() for p in m.parameters()) for m in layers]
    assert [c for c in counts if c] == [416, 32, 12832, 64, 15690]
    assert sum(p.numel() for p in model.parameters()) == 29034
    x = torch.zeros(3, 1, 28, 28)
    shapes = []
    for m in layers[:-1]:
        x = m(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 28, 28)] * 3 + [(16, 14, 14)] + [(32, 14, 14)] * 3 + [(32, 7, 7)]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_forward_with_the_relu_after_the_pool_is_the_report_order_bit_for_bit(amp: bool) -> None:
    torch.manual_seed(0)
    model = main.CNN().to(memory_format=torch.channels_last)
    images = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    images[:, :, :8] = -5.0  # whole pooling windows below zero: ties at 0 after a ReLU
    labels = torch.randint(0, 10, (64,))

    def report_order(x: torch.Tensor) -> torch.Tensor:  # each block as its nn.Sequential runs
        return model.out(model.conv2(model.conv1(x)).flatten(1))

    results = []
    for forward in (model, report_order):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = forward(images)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        results.append([logits, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(images), report_order(images))


def test_summary_table_lists_every_layer_and_total() -> None:
    table = main.model_summary()
    assert "Linear-9" in table and "Total params: 29,034" in table


def test_loader_normalises_and_shuffles_train_only(tiny_data: Path) -> None:
    train = main.get_loader("train", str(tiny_data), 100, seed=3)
    test = main.get_loader("test", str(tiny_data), 100)
    assert len(train) == 3 and [len(y) for _, y in train] == [100, 100, 56]
    raw = main.read_split(str(tiny_data), "train")[0]
    expected = (raw[0].float() / 255 - main.MEAN) / main.STD
    assert torch.allclose(train.images[0, 0], expected)
    assert torch.equal(torch.cat([y for _, y in test]), test.labels)
    train.set_epoch(1)
    first = torch.cat([y for _, y in train])
    assert not torch.equal(first, train.labels)
    assert torch.equal(first, torch.cat([y for _, y in train]))  # same epoch, same order
    train.set_epoch(2)
    assert not torch.equal(first, torch.cat([y for _, y in train]))
    before = torch.get_rng_state()
    list(test), list(train)
    assert torch.equal(before, torch.get_rng_state())  # shuffling uses its own generator


def test_limit_takes_the_first_images(tiny_data: Path) -> None:
    loader = main.get_loader("test", str(tiny_data), 32, limit=50)
    assert len(loader.labels) == 50
    assert torch.equal(loader.labels, main.read_split(str(tiny_data), "test")[1][:50])


def test_two_epoch_run_writes_log_weights_and_figure(trained: Path) -> None:
    text = (trained / "model.log").read_text()
    assert "Total params: 29,034" in text and "learning_rate: 0.001" in text
    rows = runformat.parse_log(trained / "model.log")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 < r["train_loss"] < 5 and 0 <= r["test_acc"] <= 1
        assert r["train_loss_report"] == pytest.approx(r["train_loss"] / 128, rel=0.5)
    best = min(rows, key=lambda r: r["test_loss"])["epoch"]
    assert f"best epoch (lowest test loss, saved as model.pth): {best}" in text
    assert "\n best " in text and "\n last " in text
    with Image.open(trained / "figure.png") as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 300
    state = torch.load(trained / "model.pth", weights_only=True)
    assert set(state) == set(main.CNN().state_dict())


def test_saved_weights_give_the_logged_test_accuracy(trained: Path, tiny_data: Path) -> None:
    rows = runformat.parse_log(trained / "model.log")
    best = min(rows, key=lambda r: r["test_loss"])
    model = main.CNN()
    model.load_state_dict(torch.load(trained / "model.pth", weights_only=True))
    main.prepare_model(model, torch.device("cpu"), main.Speed())
    ev = main.evaluate(model, main.get_loader("test", str(tiny_data), 128))
    assert round(ev.acc, 4) == best["test_acc"]
    assert ev.loss == pytest.approx(best["test_loss"], abs=1e-6)


def test_test_mode_prints_accuracy_and_writes_error_grid(
    trained: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    (trained / "errors.png").unlink(missing_ok=True)
    code = main.main(
        ["--test", "true", "--model_path", str(trained / "model.pth"), "--data_dir", str(tiny_data)]
    )
    out = capsys.readouterr().out
    best = min(runformat.parse_log(trained / "model.log"), key=lambda r: r["test_loss"])
    assert code == 0
    assert f"test accuracy: {100 * best['test_acc']:.2f}% ({best['test_acc']:.4f})" in out
    wrong = round((1 - best["test_acc"]) * 128)
    assert f"misclassified: {wrong} of 128" in out
    assert str(trained / "errors.png") in out
    with Image.open(trained / "errors.png") as im:
        assert im.format == "PNG"
    with Image.open(trained / "confusion.png") as im:
        assert im.format == "PNG"
    assert "digit  images  correct  accuracy" in out
    saved = (trained / "test.log").read_text()
    assert f"misclassified: {wrong} of 128" in saved and "digit  images  correct  accuracy" in saved


@pytest.mark.parametrize(
    "lr, folder",
    [
        (0.001, "lr_1e-3"),
        (0.0005, "lr_5e-4"),
        (0.0001, "lr_1e-4"),
        (0.00025, "lr_2.5e-4"),
        (0.01, "lr_1e-2"),
        (1.0, "lr_1e0"),
        (3e-05, "lr_3e-5"),
        (12.5, "lr_1.25e1"),
        (10**-4.5, "lr_3.16e-5"),
        (0.0123456, "lr_1.23e-2"),
    ],
)
def test_learning_rate_folder_names(lr: float, folder: str) -> None:
    assert main.lr_folder(lr) == folder


def test_a_rate_range_is_log_spaced_with_readable_distinct_folders() -> None:
    args = main.parse_args(["--learning_rate", "1e-5:1e-1:9", "2e-3", "--seed", "0", "1"])
    assert args.learning_rate == [
        1e-5,
        3.16e-5,
        1e-4,
        3.16e-4,
        1e-3,
        3.16e-3,
        1e-2,
        3.16e-2,
        0.1,
        2e-3,
    ]
    assert [grid.run_folder(args, 1, lr).as_posix() for lr in args.learning_rate[:3]] == [
        "runs/seed1/lr_1e-5",  # a grid over seeds goes under runs/ by default
        "runs/seed1/lr_3.16e-5",
        "runs/seed1/lr_1e-4",
    ]
    ratios = [b / a for a, b in zip(args.learning_rate, args.learning_rate[1:9])]
    assert max(ratios) / min(ratios) < 1.01  # evenly spaced on a log scale, to 3 digits


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("FaLsE", False),
    ],
)
def test_test_flag_parser(text: str, value: bool) -> None:
    assert main.parse_args(["--test", text]).test is value


def test_test_flag_rejects_other_words() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        main.str2bool("maybe")


def test_same_seed_gives_identical_logs(tiny_data: Path, tmp_path: Path) -> None:
    logs = []
    for name in ("a", "b"):
        assert (
            main.main(
                [
                    "--epoch",
                    "2",
                    "--seed",
                    "7",
                    "--data_dir",
                    str(tiny_data),
                    "--out_dir",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
        rows = runformat.parse_log(tmp_path / name / "model.log")
        logs.append([{k: v for k, v in r.items() if k != "seconds"} for r in rows])
        weights = torch.load(tmp_path / name / "model.pth", weights_only=True)
    assert logs[0] == logs[1]
    first = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    assert all(torch.equal(first[k], weights[k]) for k in first)


def test_missing_data_offline_gives_one_clear_message(tmp_path: Path) -> None:
    result = run_cli(
        "--epoch", "1", "--data_dir", str(tmp_path / "nowhere"), "--out_dir", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in result.stderr
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "--data_dir",
    ):
        assert name in result.stderr
    assert not (tmp_path / "o" / "model.log").exists()


@pytest.mark.slow
def test_real_mnist_one_epoch_reaches_97_percent(real_mnist: Path, tmp_path: Path) -> None:
    assert (
        main.main(["--epoch", "1", "--data_dir", str(real_mnist), "--out_dir", str(tmp_path)]) == 0
    )
    row = runformat.parse_log(tmp_path / "model.log")[0]
    assert row["test_acc"] >= 0.97
    assert "train images: 60000  test images: 10000" in (tmp_path / "model.log").read_text()


def test_metrics_csv_agrees_with_model_log_and_own_argv_is_logged(
    trained_once: Path, tiny_data: Path
) -> None:
    rows = runformat.read_metrics_csv(trained_once / "metrics.csv")
    assert [{k: v for k, v in r.items() if k != "lr"} for r in rows] == runformat.parse_log(
        trained_once / "model.log"
    )
    assert [r["lr"] for r in rows] == [1e-3, 1e-3]  # a constant rate: the flag's, every epoch
    header = (trained_once / "metrics.csv").read_text().splitlines()[0]
    assert header == (
        "epoch,train_loss,train_acc,test_loss,test_acc,train_loss_report,"
        "test_loss_report,seconds,saved,lr"
    )
    assert (
        f"\ncommand: python main.py --epoch 2 --data_dir {tiny_data} --out_dir {trained_once}\n"
        in (trained_once / "model.log").read_text()
    )


def test_a_one_cycle_runs_rate_column_is_the_schedule_at_each_epochs_last_step(
    tiny_data: Path, tmp_path: Path
) -> None:
    flags = ["--recipe", "fast", "--epoch", "3", "--batch_size", "64", "--amp", "false"]
    assert main.main([*flags, "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]) == 0
    rows = runformat.read_metrics_csv(tmp_path / "metrics.csv")
    config = json.loads((tmp_path / "config.json").read_text())
    per_epoch = math.ceil(config["train_images"] / 64)
    total = runformat.schedule_steps(3, 0.85, per_epoch)
    last_steps = [per_epoch - 1, 2 * per_epoch - 1, total - 1]
    expected = [runformat.one_cycle(step, total, 3.2e-2)[0] for step in last_steps]
    assert [r["lr"] for r in rows] == [float(f"{lr:.8g}") for lr in expected]
    assert (
        runformat.epoch_rates(config, 3, Path("c")) == expected
    )  # older folders' rates, from config.json


def test_import_and_help_load_no_torchvision_matplotlib_or_pil(tmp_path: Path) -> None:
    probe = (
        "import sys, runpy; sys.argv = ['main.py', '--help']\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torchvision', 'matplotlib', 'PIL') if m in sys.modules))"
    )
    result = run_python(probe)
    assert result.returncode == 0, result.stderr
    assert "--recipe" in result.stdout and result.stdout.strip().endswith("[]")


def test_training_does_not_import_torch_dynamo(tiny_data: Path, tmp_path: Path) -> None:
    argv = ["--recipe", "fast", "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]
    code, loaded = modules_after(argv)
    assert code == 0 and "torch" in loaded and "torch._dynamo" not in loaded


@pytest.mark.parametrize("schedule, decay", [("constant", 0), ("onecycle", 0), ("onecycle", 0.1)])
def test_our_adam_and_one_cycle_equal_torch_optim_step_for_step(
    schedule: str, decay: float
) -> None:
    torch.manual_seed(0)
    ours, theirs = main.CNN(), main.CNN()
    theirs.load_state_dict(ours.state_dict())
    adam = optim.Adam(ours.parameters(), 1e-2, weight_decay=decay)
    # with a weight decay, ours is AdamW (decoupled)
    kind = torch.optim.AdamW if decay else torch.optim.Adam
    reference = kind(theirs.parameters(), lr=1e-2, foreach=True, weight_decay=decay)
    total = 12
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=1e-2, total_steps=total)
    for step in range(total):
        images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        for model, optimizer in ((ours, adam), (theirs, reference)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        if schedule == "onecycle":
            adam.lr, adam.beta1 = runformat.one_cycle(adam.steps, total, 1e-2)
            assert (adam.lr, adam.beta1) == (
                reference.param_groups[0]["lr"],
                reference.param_groups[0]["betas"][0],
            )
        adam.step()
        reference.step()
        if schedule == "onecycle":
            scheduler.step()
        if step == 5:  # a checkpoint of torch's Adam (older checkpoints hold one) resumes ours
            adam = optim.Adam(ours.parameters(), 1e-2, weight_decay=decay)
            adam.load_state_dict(reference.state_dict())
    assert adam.steps == total
    for mine, torchs in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(mine, torchs)


def test_reading_mnist_does_not_import_torchvision(tiny_data: Path) -> None:
    probe = (
        f"import sys, main; main.get_loader('train', {str(tiny_data)!r}, 32)\n"
        "print('torchvision' in sys.modules)"
    )
    result = run_python(probe)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            [],
            {
                "epoch": 50,
                "learning_rate": [1e-3],
                "batch_size": 128,
                "lr_schedule": "constant",
                "label_smoothing": 0.0,
                "amp": False,
            },
        ),
        (["--recipe", "fast"], main.RECIPES["fast"]),
        (
            [
                "--recipe",
                "fast",
                "--epoch",
                "3",
                "--learning_rate",
                "2e-3",
                "--batch_size",
                "64",
                "--amp",
                "false",
                "--label_smoothing",
                "0",
            ],
            {
                "epoch": 3,
                "learning_rate": [2e-3],
                "batch_size": 64,
                "lr_schedule": "onecycle",
                "label_smoothing": 0.0,
                "amp": False,
            },
        ),
        (
            ["--lr_schedule", "onecycle", "--amp"],
            {"epoch": 50, "lr_schedule": "onecycle", "amp": True},
        ),
    ],
)
def test_recipe_values_and_explicit_overrides(argv: list[str], expected: dict) -> None:
    args = main.parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_fast_recipe_on_tiny_data_writes_the_usual_outputs_and_logs_its_values(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        main.main(
            ["--recipe", "fast", "--limit", "200", "--amp", "false", "--data_dir", str(tiny_data)]
        )
        == 0
    )
    out = tmp_path / "runs" / "fast"  # a recipe's default folder, under runs/
    files = {"model.pth", "model.log", "metrics.csv", "config.json", "checkpoint.pth"}
    # no figure.png: the recipe draws none (see its "figure" setting)
    assert {p.name for p in out.iterdir()} - {".lock", RECORD} == files
    text = (out / "model.log").read_text()
    assert "recipe: fast  lr_schedule: onecycle  label_smoothing: 0.1" in text
    fast = main.RECIPES["fast"]
    assert (
        f"learning_rate: {fast['learning_rate'][0]:g}  batch_size: {fast['batch_size']}  "
        "epochs: 2" in text
    )
    assert f"last_epoch_fraction: {fast['last_epoch_fraction']:g}" in text
    assert len(runformat.read_metrics_csv(out / "metrics.csv")) == 2
    assert main.main(["--test", "true", "--recipe", "fast", "--data_dir", str(tiny_data)]) == 0
    assert (out / "test.log").is_file()


def test_figure_is_drawn_unless_the_run_or_its_recipe_turns_it_off(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--epoch", "1", "--limit", "200", "--data_dir", str(tiny_data), "--out_dir"]
    assert main.main([*args, str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "figure.png").is_file()
    wrote = "model.pth, model.log, metrics.csv, config.json, checkpoint.pth and figure.png"
    assert capsys.readouterr().out.rstrip().endswith(f"report: {wrote}")
    fast = [*args, str(tmp_path / "fast"), "--recipe", "fast", "--amp", "false"]
    assert main.main([*fast, "--figure"]) == 0
    assert (tmp_path / "fast" / "figure.png").is_file()
    # started over without a figure, the earlier run's must not stay beside the new model
    assert main.main([*fast, "--overwrite"]) == 0
    assert not (tmp_path / "fast" / "figure.png").exists()
    assert "(no figure.png: --figure true draws it)" in capsys.readouterr().out
    config = json.loads((tmp_path / "fast" / "config.json").read_text())
    assert config["figure"] is False and config["recipe"] == "fast"
    # finished and complete without it: a resume has nothing to write
    assert main.main([*fast, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "fast" / "figure.png").exists()


def test_one_cycle_schedule_and_a_short_last_epoch_resume_exactly(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--recipe", "fast", "--epoch", "3", "--amp", "false", "--data_dir", str(tiny_data)]
    args += ["--batch_size", "32", "--last_epoch_fraction", "0.5"]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    with stopped_in_epoch(monkeypatch, 2):
        assert main.main([*args, "--out_dir", str(tmp_path / "cut")]) == 143
    assert len(runformat.parse_log(tmp_path / "cut" / "model.log")) == 1
    assert main.main([*args, "--out_dir", str(tmp_path / "cut"), "--resume"]) == 0
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    assert same_weights(tmp_path / "cut" / "model.pth", tmp_path / "whole" / "model.pth")
    state = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert state["optimizer"]["state"][0]["step"] == 8 + 8 + 4  # 256 images: 8 batches, then 4
    err = main.main([*args[:3], "4", *args[4:], "--out_dir", str(tmp_path / "cut"), "--resume"])
    assert err == 2  # the one-cycle schedule spans the run: more epochs cannot resume it
    err = main.main([*args[:-1], "0.6", "--out_dir", str(tmp_path / "cut"), "--resume"])
    assert err == 2  # nor another last epoch


def test_a_one_cycle_recipe_cut_short_warns_and_still_runs(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    full = main.parse_args(["--recipe", "fast"])
    fast = main.RECIPES["fast"]
    assert grid.short_schedule(full, fast, math.ceil(60_000 / 256)) is None  # as tuned
    assert grid.short_schedule(main.parse_args([]), fast, 1) is None  # a constant rate
    argv = ["--recipe", "fast", "--limit", "200", "--epoch", "1", "--amp", "false"]
    assert main.main([*argv, "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]) == 0
    warned = [line for line in capsys.readouterr().out.splitlines() if "one-cycle" in line]
    assert warned == [
        "--recipe fast's one-cycle schedule was tuned for 435 optimizer steps; this run has 1 "
        "(--epoch, --limit made it shorter), so it may end far below the recipe's accuracy."
    ]
    assert (tmp_path / "model.pth").is_file()


def test_sgd_steps_as_torch_optim_sgd_with_momentum_and_decoupled_decay() -> None:
    from mnist_cnn.training.optim import SGD

    torch.manual_seed(0)
    ours, theirs = nn.Linear(5, 3), nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    sgd = SGD(ours.parameters(), 0.05, weight_decay=0.01)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, foreach=True)
    for _ in range(4):
        x = torch.randn(8, 5)
        for model, optimizer in ((ours, sgd), (theirs, reference)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
        with torch.no_grad():  # AdamW's decoupled decay, by hand, before torch's step
            for p in theirs.parameters():
                p.mul_(1 - 0.05 * 0.01)
        sgd.step()
        reference.step()
    assert sgd.steps == 4
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_without_a_terminal_progress_lines_come_at_a_steady_pace_with_their_fields(
    capsys: pytest.CaptureFixture,
) -> None:
    from mnist_cnn.training.epochs import Progress

    run = main.Run(
        settings=report_settings(epoch=4),
        folder=Path("x"),
        seed=0,
        speed=main.Speed(),
        recipe="report",
        place=(2, 3),
    )
    now = [100.0]
    progress = Progress(run, 200, clock=lambda: now[0])  # pytest's stderr is no terminal
    main.configure_logging()  # lines on stdout, as the command line prints them
    capsys.readouterr()
    with progress:
        for epoch in (1, 2):
            progress.epoch_started(epoch)
            for _ in range(200):
                now[0] += 0.5  # 2 batches a second: an epoch of 100 s
                progress.batch_done(main.Tally(torch.device("cpu")))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20  # a tenth of an epoch each: 10 s apart, more than PACE
    assert lines[0] == (
        "run 2/3  epoch 1/4  batch 20/200 (10%)  2.0 batch/s  6 min left (13 min left for runs 2-3)"
    )
    assert lines[-1].startswith("run 2/3  epoch 2/4  batch 200/200 (100%)  2.0 batch/s  3 min left")
    now[0], fast = 0.0, Progress(run, 200, clock=lambda: now[0])
    capsys.readouterr()
    fast.epoch_started(1)
    for _ in range(200):
        now[0] += 0.01  # an epoch of 2 s: never more than one line every PACE seconds
        fast.batch_done(main.Tally(torch.device("cpu")))
    assert capsys.readouterr().out == ""
