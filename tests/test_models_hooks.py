"""Hooks on any nn.Module: paths, input vs output, tuples, early stop, splicing, widths."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from saelab.models.hooks import (
    HookError,
    HookPoint,
    capture,
    capture_with_output,
    check_width,
    resolve_module,
    splice,
)


class PairBlock(nn.Module):
    """Returns (hidden, hidden * 10) like a transformer block returning extra values."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.linear(x))
        return h, h * 10


class Net(nn.Module):
    def __init__(self, width: int = 6, depth: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(PairBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x, _extra = layer(x)
        return self.head(x)

    def block(self, i: int) -> PairBlock:
        layer = self.layers[i]
        assert isinstance(layer, PairBlock)
        return layer


@pytest.fixture
def net() -> Net:
    return Net()


def test_output_and_input_hooks_read_the_right_tensors(net: Net) -> None:
    x = torch.randn(4, 6)
    got = capture(net, ["layers.0", "layers.1:input", "layers.1:output:1"], lambda: net(x),
                  stop_early=False)
    h0 = torch.tanh(net.block(0).linear(x))
    h1 = torch.tanh(net.block(1).linear(h0))
    assert torch.allclose(got[HookPoint("layers.0")], h0)  # tuple element 0 by default
    assert torch.allclose(got[HookPoint("layers.1", "input")], h0)  # input = previous output
    assert torch.allclose(got[HookPoint("layers.1", "output", 1)], h1 * 10)


def test_early_stop_skips_later_layers(net: Net) -> None:
    calls: list[str] = []
    net.layers[2].register_forward_hook(lambda *_: calls.append("layers.2"))
    net.head.register_forward_hook(lambda *_: calls.append("head"))
    capture(net, ["layers.1"], lambda: net(torch.randn(2, 6)))
    assert calls == []  # the pass ended right after layers.1
    capture(net, ["layers.1"], lambda: net(torch.randn(2, 6)), stop_early=False)
    assert calls == ["layers.2", "head"]


def test_input_hook_stops_before_the_module_runs(net: Net) -> None:
    calls: list[str] = []
    net.layers[1].register_forward_hook(lambda *_: calls.append("layers.1"))
    capture(net, ["layers.1:input"], lambda: net(torch.randn(2, 6)))
    assert calls == []


def test_stop_waits_for_the_last_hook_in_execution_order(net: Net) -> None:
    # listed out of order: the pass must still run until layers.2 has fired
    got = capture(net, ["layers.2", "layers.0"], lambda: net(torch.randn(2, 6)))
    assert set(got) == {HookPoint("layers.0"), HookPoint("layers.2")}


def test_wrong_path_lists_closest_paths(net: Net) -> None:
    with pytest.raises(HookError) as err:
        resolve_module(net, "layer.1")
    assert "layers.1" in str(err.value) and "'layer.1'" in str(err.value)
    with pytest.raises(HookError, match=r"layers\.\d"):
        capture(net, ["layers.7"], lambda: net(torch.randn(1, 6)))


def test_hook_parse_errors_explain_the_format() -> None:
    assert HookPoint.parse("a.b:input") == HookPoint("a.b", "input", 0)
    assert HookPoint.parse("a.b:output:2").name == "a.b:output:2"
    with pytest.raises(HookError, match="'output' or 'input'"):
        HookPoint.parse("a.b:middle")
    with pytest.raises(HookError, match="not an integer"):
        HookPoint.parse("a.b:output:x")


def test_bad_tuple_index_is_named(net: Net) -> None:
    with pytest.raises(HookError, match="returned 2 values"):
        capture(net, ["layers.0:output:5"], lambda: net(torch.randn(1, 6)))


def test_splice_replaces_one_tuple_element_and_keeps_the_rest(net: Net) -> None:
    x = torch.randn(3, 6)
    h0 = torch.tanh(net.block(0).linear(x))
    with splice(net, "layers.0", lambda h: torch.zeros_like(h)):
        spliced, got = capture_with_output(
            net, ["layers.0:output:0", "layers.0:output:1", "layers.1:input"], lambda: net(x))
    assert torch.equal(got[HookPoint("layers.0")], torch.zeros(3, 6))
    assert torch.allclose(got[HookPoint("layers.0", "output", 1)], h0 * 10)  # untouched
    assert torch.equal(got[HookPoint("layers.1", "input")], torch.zeros(3, 6))  # reaches layer 1
    h = torch.zeros(3, 6)
    for layer in net.layers[1:]:
        h, _ = layer(h)
    assert torch.allclose(spliced, net.head(h))
    assert not torch.allclose(net(x), spliced)  # the splice is gone after the block


def test_splice_on_input(net: Net) -> None:
    x = torch.randn(2, 6)
    out, got = capture_with_output(net, ["layers.2:input"], lambda: net(x))
    with splice(net, "layers.2:input", lambda h: h * 0):
        spliced = net(x)
    h, _ = net.layers[2](torch.zeros(2, 6))
    assert torch.allclose(spliced, net.head(h))
    assert not torch.allclose(out, spliced)
    assert got[HookPoint("layers.2", "input")].shape == (2, 6)


def test_width_mismatch_names_both_widths() -> None:
    with pytest.raises(HookError) as err:
        check_width("transformer.h.1", 32, 64)
    assert "width 32" in str(err.value) and "d_in=64" in str(err.value)
    check_width("transformer.h.1", 64, 64)
