"""``alregions embed | prototypes | similarity``: cold start without labels (issue #6)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ._argtypes import non_negative_int, positive_int
from ._atomic import load_npy, save_npy
from .cli_pool import add_inference_args

__all__ = ["add_embed_parsers"]


def _encoder(args: argparse.Namespace):
    from .embed import load_encoder

    source = args.encoder if args.encoder != "random" else f"random:{args.encoder_seed}"
    return load_encoder(source, patch_size=args.patch_size, level=args.level)


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="random",
                   help="our checkpoint (.pt), torchvision:<arch>[:weights], an exported program (.pt2), "
                        "or 'random' (untrained compact CNN, seeded; default)")
    p.add_argument("--encoder-seed", type=non_negative_int, default=0, help="seed of the 'random' encoder")
    p.add_argument("--patch-size", type=positive_int, help="encoder input side (px at --level)")
    p.add_argument("--level", type=non_negative_int, help="pyramid level the encoder reads")


def _cmd_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .embed import embed_slide
    from .wsi import open_slide

    encoder = _encoder(args)
    with open_slide(args.slide) as slide, tqdm(desc="embedding", unit="patch", file=sys.stderr, mininterval=1.0) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        emb = embed_slide(slide, encoder, stride=args.stride, progress=progress, batch_size=args.batch_size,
                          device=None if args.device == "auto" else args.device, compile=args.compile)
    out = save_npy(args.out, emb)
    n = int(np.isfinite(emb).all(-1).sum())
    print(f"{n} patch embeddings ({emb.shape[0]}x{emb.shape[1]} map, D={emb.shape[2]}, {encoder.name}) written to {out}")
    return 0


def _cmd_prototypes(args: argparse.Namespace) -> int:
    from .prototypes import (
        from_captions,
        from_folder,
        keyword_search,
        load_embeddings,
        read_caption_table,
        retrieve,
        save_prototypes,
    )

    if args.source == "from-folder":
        protos = from_folder(args.folder, _encoder(args))
    elif args.source == "keyword":
        table = read_caption_table(args.table)
        groups = [[w.strip() for w in g.split(",")] for g in args.with_]
        without = [w.strip() for g in (args.without or []) for w in g.split(",")]
        rows = keyword_search(table, groups, without)
        print(f"{len(rows)} of {len(table)} captions match")
        for i in rows[: args.show]:
            print(f"  {i}: {table['caption'].iloc[i]}")
        protos = from_captions(table, rows, _encoder(args), cls=args.cls,
                               root=args.root or Path(args.table).parent, query={"with": groups, "without": without})
    else:
        images = load_embeddings(args.images)
        text = load_embeddings(args.text)
        if len(text) != 1:
            raise ValueError(f"{args.text}: expected one text embedding, got {len(text)}")
        protos = retrieve(images, text[0], top_n=args.top, cls=args.cls, prompt=args.prompt)
    out = save_prototypes(args.out, protos)
    counts = ", ".join(f"{c}: {len(e)}" for c, e in protos.embeddings.items())
    print(f"prototype set ({counts}; D={protos.dim}) written to {out}")
    return 0


def _cmd_similarity(args: argparse.Namespace) -> int:
    from .embed import similarity_map
    from .prototypes import load_prototypes

    emb = load_npy(args.embeddings, what="embeddings")
    sim = similarity_map(emb, load_prototypes(args.prototypes).of(args.cls))
    out = save_npy(args.out, sim)
    print(f"similarity map {sim.shape[0]}x{sim.shape[1]} (max {sim.max():.3f}) written to {out}")
    return 0


def add_embed_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="patch embeddings of a slide on the map grid",
                       description="L2-normalised patch embeddings (H, W, D) of a slide, one per map cell "
                                   "(stride level-0 px), NaN off tissue, saved as .npy.")
    e.add_argument("slide")
    _add_encoder_args(e)
    e.add_argument("--stride", type=positive_int, default=128, help="level-0 px per map pixel")
    add_inference_args(e)
    e.add_argument("--out", default="embeddings.npy")
    e.set_defaults(func=_cmd_embed)

    p = sub.add_parser("prototypes", help="build a prototype set (.npz)",
                       description="Prototype embeddings from example images, a caption keyword search, "
                                   "or text-to-image retrieval.")
    psub = p.add_subparsers(dest="source", required=True)
    f = psub.add_parser("from-folder", help="example images, one sub-folder per class")
    f.add_argument("folder")
    k = psub.add_parser("keyword", help="keyword search over an image-caption table (CSV/Parquet)")
    k.add_argument("table", help="table with image_path and caption columns")
    k.add_argument("--with", dest="with_", action="append", required=True, metavar="WORD[,SYNONYM...]",
                   help="a keyword group: any of its comma-separated synonyms must occur (repeat: all groups)")
    k.add_argument("--without", action="append", metavar="WORD[,WORD...]", help="captions with any of these are left out")
    k.add_argument("--root", help="folder image paths are relative to (default: the table's folder)")
    k.add_argument("--show", type=non_negative_int, default=10, help="matching captions to print")
    r = psub.add_parser("retrieve", help="top-N images by cosine similarity to a text embedding")
    r.add_argument("--images", required=True, help="image embeddings (.npy or Parquet column 'embedding')")
    r.add_argument("--text", required=True, help="the prompt's text embedding (.npy, one vector)")
    r.add_argument("--top", type=positive_int, default=50)
    r.add_argument("--prompt", help="recorded in the provenance")
    for q in (f, k, r):
        q.add_argument("--class", dest="cls", default="tumour", help="class of the prototypes (keyword, retrieve)")
        q.add_argument("--out", default="prototypes.npz")
    for q in (f, k):
        _add_encoder_args(q)
    p.set_defaults(func=_cmd_prototypes)

    s = sub.add_parser("similarity", help="prototype similarity map from patch embeddings",
                       description="Max cosine similarity of each patch embedding to the prototypes: a priority "
                                   "map for `alregions suggest --method prototype`.")
    s.add_argument("embeddings", help="(H, W, D) .npy from `alregions embed`")
    s.add_argument("prototypes", help=".npz from `alregions prototypes`")
    s.add_argument("--class", dest="cls", help="only this class's prototypes (default: all)")
    s.add_argument("--out", default="similarity.npy")
    s.set_defaults(func=_cmd_similarity)
