"""docs/own-loop.md: its plain-PyTorch DML and distillation loops run exactly as printed, and they learn."""

import torch

from markdown_code import python_blocks, run_page


def test_the_own_loop_page_runs_as_printed_and_its_networks_learn(capsys):
    torch.set_num_threads(1)
    blocks = python_blocks("own-loop.md")
    assert len(blocks) == 3
    assert len(blocks[0].strip().splitlines()) <= 30  # the complete DML loop stays short
    namespace = run_page("own-loop.md", blocks=slice(0, 2))  # DML, then the loss built from its parts
    assert min(namespace["accuracy"]) > 0.85
    teacher_before = [p.clone() for p in namespace["members"][0].parameters()]
    run_page("own-loop.md", namespace, blocks=slice(2, 3))  # distillation from member 0
    assert namespace["student_accuracy"] > 0.8
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, namespace["teacher"].parameters()))
    out = capsys.readouterr().out
    assert "DML test accuracy:" in out and "member 0 loss:" in out and "student test accuracy:" in out
