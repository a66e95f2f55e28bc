"""SAELens and dictionary_learning interoperability, both ways, against the real peer libraries.

Installs the peers into benchmarks/.peer-venv if missing (as train_throughput.py does), then:

1. saelab → peers: builds one saelab SAE of every architecture (weights perturbed so biases,
   thresholds and decoder norms are all non-trivial), exports each with
   ``saelab.interop.export`` to SAELens and to dictionary_learning, has the peers load them and
   encode/decode the same inputs, and compares codes and reconstructions with saelab's.
2. peers → saelab: the peers make SAEs of each of their architectures and save them their own
   way (SAELens ``save_model`` / ``save_inference_model``, dictionary_learning ``ae.pt`` +
   ``config.json``), including SAELens ``apply_b_dec_to_input = False``; ``saelab.load`` reads
   each and the codes and reconstructions are compared with the peers'.
3. With ``--write-fixtures``, copies the peer-made folders, the inputs and the peers' outputs
   into tests/fixtures/peers/ for the unit tests (which then need no peer installed).

Prints one JSON document: per SAE the largest absolute difference of codes and of
reconstructions, and the overall maxima. Architectures with no counterpart are listed with the
reason. Usage: python benchmarks/peer_interop.py [--write-fixtures] [--d 16 --m 48]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import saelab
from saelab.interop import InteropError, export

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures" / "peers"
sys.path.insert(0, str(HERE))
from train_throughput import PEER_PY, ensure_peer_venv  # noqa: E402

ARCH_OPTIONS = {"topk": {"k": 6}, "ordered": {"k": 6}, "batchtopk": {"k": 6},
                "matryoshka": {"k": 6, "group_fractions": [0.25, 0.25, 0.5]},
                "transcoder": {"k": 6, "d_out": 0}, "crosscoder": {"k": 6, "n_layers": 2}}


def saelab_sae(arch: str, d: int, m: int, seed: int) -> saelab.SAE:
    opts = {"architecture": arch, "d_in": d, "d_sae": m, **ARCH_OPTIONS.get(arch, {}),
            "model_name": "tiny-model", "hook_name": "blocks.1"}
    if arch == "transcoder":
        opts["d_out"] = d
    sae = saelab.build(saelab.config_from_dict(opts).resolved())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
            if name == "threshold":
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
        sae.W_dec.mul_(0.5 + torch.rand(m, 1, generator=g))  # not unit-norm, as after folding
        if "threshold" in dict(sae.named_buffers()):
            sae.threshold.fill_(0.3)  # type: ignore[operator]
    return sae.eval()


def max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--m", type=int, default=48)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--write-fixtures", action="store_true")
    args = p.parse_args()
    ensure_peer_venv()
    work = Path(tempfile.mkdtemp(prefix="saelab_interop_"))
    x = torch.randn(args.rows, args.d, generator=torch.Generator().manual_seed(1)) * 1.5
    np.save(work / "x.npy", x.numpy())
    (work / "sizes.json").write_text(json.dumps({"d": args.d, "m": args.m}))
    ours: dict[str, saelab.SAE] = {}
    skipped: dict[str, dict[str, str]] = {"saelens": {}, "dictionary_learning": {}}
    for seed, arch in enumerate(sorted(saelab.architectures())):
        sae = saelab_sae(arch, args.d, args.m, seed)
        ours[arch] = sae
        for fmt in ("saelens", "dictionary_learning"):
            try:
                export(sae, work / "exports" / fmt, fmt, sae_id=arch)  # type: ignore[arg-type]
            except InteropError as err:
                skipped[fmt][arch] = str(err)
    proc = subprocess.run([str(PEER_PY), str(HERE / "peers" / "interop_peer.py"), str(work)],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                               "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"peer side failed:\n{proc.stderr[-4000:]}")
    peer = json.loads(proc.stdout.strip().splitlines()[-1])

    results: dict[str, dict[str, dict[str, float]]] = {"saelab_to_peer": {}, "peer_to_saelab": {}}
    with torch.no_grad():
        for fmt, names in peer["loaded"].items():
            for arch in names:
                sae = ours[arch]
                codes = sae.encode(x)
                base = work / "peer_loaded" / f"{fmt}.{arch}"
                results["saelab_to_peer"][f"{fmt}/{arch}"] = {
                    "codes": max_diff(codes, np.load(f"{base}.codes.npy")),
                    "recon": max_diff(sae.decode(codes), np.load(f"{base}.recon.npy"))}
        for fmt, names in peer["made"].items():
            for name in names:
                folder = work / "peer_made" / fmt / name
                sae = saelab.load(folder)
                codes = sae.encode(x)
                results["peer_to_saelab"][f"{fmt}/{name}"] = {
                    "saelab_architecture": sae.name,  # type: ignore[dict-item]
                    "codes": max_diff(codes, np.load(f"{folder}.codes.npy")),
                    "recon": max_diff(sae.decode(codes), np.load(f"{folder}.recon.npy"))}
    every = [v for part in results.values() for v in part.values()]
    summary = {"max_code_diff": max(float(v["codes"]) for v in every),
               "max_recon_diff": max(float(v["recon"]) for v in every),
               "n_compared": len(every)}
    report = {"peers": peer["versions"], "sizes": {"d_in": args.d, "d_sae": args.m,
                                                    "rows": args.rows},
              "summary": summary, **results, "no_counterpart": skipped}
    if args.write_fixtures:
        write_fixtures(work, x, peer["made"], args)
        report["fixtures"] = str(FIXTURES.relative_to(ROOT))
    out = HERE / "results" / "peer_interop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


def write_fixtures(work: Path, x: torch.Tensor, made: dict[str, list[str]],
                   args: argparse.Namespace) -> None:
    """Frozen peer-made folders + inputs + the peers' own outputs, for tests without peers."""
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    np.save(FIXTURES / "x.npy", x.numpy())
    index = {}
    for fmt, names in made.items():
        for name in names:
            src = work / "peer_made" / fmt / name
            dst = FIXTURES / fmt / name
            shutil.copytree(src, dst)
            for part in ("codes", "recon"):
                shutil.copy(work / "peer_made" / fmt / f"{name}.{part}.npy", dst / f"expected_{part}.npy")
            index[f"{fmt}/{name}"] = {"format": fmt}
    (FIXTURES / "index.json").write_text(json.dumps(
        {"written_by": "benchmarks/peer_interop.py --write-fixtures", "d_in": args.d,
         "d_sae": args.m, "saes": index}, indent=2) + "\n")


if __name__ == "__main__":
    main()
