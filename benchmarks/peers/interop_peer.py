"""Peer side of benchmarks/peer_interop.py (runs in benchmarks/.peer-venv).

1. Loads every folder saelab exported with SAELens's ``SAE.load_from_disk`` and with
   dictionary_learning's classes, and writes their codes and reconstructions of x.npy.
2. Makes SAEs with the peers themselves (random weights, perturbed so biases, thresholds and
   decoder norms are all non-trivial), saves them the way each library saves, and writes their
   codes and reconstructions of x.npy, for saelab to load and compare.

Usage: python interop_peer.py WORK_DIR   (prints one JSON line)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def save_out(folder: Path, name: str, codes: torch.Tensor, recon: torch.Tensor) -> None:
    np.save(folder / f"{name}.codes.npy", codes.detach().float().numpy())
    np.save(folder / f"{name}.recon.npy", recon.detach().float().numpy())


def perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            if name in ("threshold",):
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5
                        * (0.5 + torch.rand(p.shape[0], 1, generator=g)))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def load_exports(work: Path, x: torch.Tensor) -> dict[str, list[str]]:
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK
    from sae_lens import SAE

    out = work / "peer_loaded"
    out.mkdir(exist_ok=True)
    done: dict[str, list[str]] = {"saelens": [], "dictionary_learning": []}
    for folder in sorted((work / "exports" / "saelens").iterdir()):
        if not folder.is_dir():
            continue
        sae = SAE.load_from_disk(str(folder))
        with torch.no_grad():
            codes = sae.encode(x)
            save_out(out, f"saelens.{folder.name}", codes, sae.decode(codes))
        done["saelens"].append(folder.name)
    classes = {"AutoEncoder": AutoEncoder, "GatedAutoEncoder": GatedAutoEncoder,
               "JumpReluAutoEncoder": JumpReluAutoEncoder, "AutoEncoderTopK": AutoEncoderTopK,
               "BatchTopKSAE": BatchTopKSAE, "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE}
    for folder in sorted((work / "exports" / "dictionary_learning").iterdir()):
        if not folder.is_dir():
            continue
        trainer = json.loads((folder / "config.json").read_text())["trainer"]
        cls = classes[trainer["dict_class"]]
        path = str(folder / "ae.pt")
        if cls is AutoEncoder:  # keep saelab's decoder norms (see saelab.interop docs)
            ae = AutoEncoder.from_pretrained(path, normalize_decoder=False)
        elif cls in (GatedAutoEncoder, JumpReluAutoEncoder):
            ae = cls.from_pretrained(path)
        else:
            ae = cls.from_pretrained(path, k=trainer["k"])
        with torch.no_grad():
            codes = ae.encode(x)
            save_out(out, f"dictionary_learning.{folder.name}", codes, ae.decode(codes))
        done["dictionary_learning"].append(folder.name)
    return done


def make_saelens(root: Path, x: torch.Tensor, d: int, m: int) -> list[str]:
    import sae_lens as sl

    root.mkdir(parents=True, exist_ok=True)
    meta = {"model_name": "tiny-model", "hook_name": "blocks.1.hook_resid_post"}
    made = []
    specs = [("standard", sl.StandardSAE, sl.StandardSAEConfig, {}),
             ("gated", sl.GatedSAE, sl.GatedSAEConfig, {}),
             ("jumprelu", sl.JumpReLUSAE, sl.JumpReLUSAEConfig, {}),
             ("topk", sl.TopKSAE, sl.TopKSAEConfig, {"k": 6})]
    for seed, (name, cls, cfg_cls, extra) in enumerate(specs):
        for apply_b_dec in (True, False):
            cfg = cfg_cls(d_in=d, d_sae=m, apply_b_dec_to_input=apply_b_dec,
                          metadata=sl.saes.sae.SAEMetadata(**meta), **extra)
            sae = cls(cfg)
            perturb(sae, seed * 10 + apply_b_dec)
            tag = f"{name}{'' if apply_b_dec else '_no_bdec_in'}"
            sae.save_model(root / tag)
            with torch.no_grad():
                codes = sae.encode(x)
                save_out(root, tag, codes, sae.decode(codes))
            made.append(tag)
    # BatchTopK trains as its own class and saves for inference as a JumpReLU
    cfg = sl.BatchTopKTrainingSAEConfig(d_in=d, d_sae=m, k=6,
                                        metadata=sl.saes.sae.SAEMetadata(**meta))
    trainer_sae = sl.BatchTopKTrainingSAE(cfg)
    perturb(trainer_sae, 99)
    with torch.no_grad():
        trainer_sae.topk_threshold.fill_(0.3)
    trainer_sae.save_inference_model(root / "batchtopk")
    loaded = sl.SAE.load_from_disk(str(root / "batchtopk"))
    with torch.no_grad():
        codes = loaded.encode(x)
        save_out(root, "batchtopk", codes, loaded.decode(codes))
    made.append("batchtopk")
    return made


def make_dictionary_learning(root: Path, x: torch.Tensor, d: int, m: int) -> list[str]:
    from dictionary_learning.dictionary import (
        AutoEncoder,
        AutoEncoderNew,
        GatedAutoEncoder,
        JumpReluAutoEncoder,
    )
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    root.mkdir(parents=True, exist_ok=True)
    made = []
    specs = [("AutoEncoder", lambda: AutoEncoder(d, m), {}),
             ("AutoEncoderNew", lambda: AutoEncoderNew(d, m), {}),
             ("GatedAutoEncoder", lambda: GatedAutoEncoder(d, m), {}),
             ("JumpReluAutoEncoder", lambda: JumpReluAutoEncoder(d, m), {}),
             ("AutoEncoderTopK", lambda: AutoEncoderTopK(d, m, 6), {"k": 6}),
             ("BatchTopKSAE", lambda: BatchTopKSAE(d, m, 6), {"k": 6}),
             ("MatryoshkaBatchTopKSAE",
              lambda: MatryoshkaBatchTopKSAE(d, m, 6, [m // 4, m // 4, m // 2]), {"k": 6})]
    for seed, (cls_name, make, extra) in enumerate(specs):
        ae = make()
        perturb(ae, 200 + seed)
        if hasattr(ae, "threshold") and ae.threshold.ndim == 0:
            with torch.no_grad():
                ae.threshold.fill_(0.25)
        folder = root / cls_name
        folder.mkdir(exist_ok=True)
        torch.save(ae.state_dict(), folder / "ae.pt")
        config = {"trainer": {"dict_class": cls_name, "activation_dim": d, "dict_size": m,
                              "lm_name": "tiny-model", "submodule_name": "blocks.1",
                              "layer": 1, **extra}, "buffer": {"d_submodule": d}}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        with torch.no_grad():
            codes = ae.encode(x)
            save_out(root, cls_name, codes, ae.decode(codes))
        made.append(cls_name)
    return made


def main() -> None:
    work = Path(sys.argv[1])
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(work / "x.npy"))
    d, m = json.loads((work / "sizes.json").read_text()).values()
    loaded = load_exports(work, x)
    made = {"saelens": make_saelens(work / "peer_made" / "saelens", x, d, m),
            "dictionary_learning": make_dictionary_learning(
                work / "peer_made" / "dictionary_learning", x, d, m)}
    from importlib.metadata import version

    import dictionary_learning  # noqa: F401

    print(json.dumps({"loaded": loaded, "made": made,
                      "versions": {"sae-lens": version("sae-lens"),
                                   "dictionary-learning": version("dictionary-learning"),
                                   "torch": torch.__version__}}))


if __name__ == "__main__":
    main()
