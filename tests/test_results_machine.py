"""The machine line of every result names the CPU and the vector instructions torch runs on it."""

from __future__ import annotations

import os

import torch

from biomatch.results import cpu_model, machine_description


def test_machine_description_names_cores_model_and_instruction_set():
    line = machine_description()
    if torch.cuda.is_available():
        assert line.startswith("gpu: ")
        return
    assert line.startswith(f"cpu: {os.cpu_count()} cores (")
    assert cpu_model() in line
    assert cpu_model().endswith(torch.backends.cpu.get_cpu_capability())
    assert "load " in line
