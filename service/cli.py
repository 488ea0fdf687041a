"""``sslic`` command line: compress, decompress, info.

Exit codes: 0 success, 2 usage error, 3 bad input (image, container or parameter), 4 model cannot be loaded,
5 file cannot be read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bitstream import extract_level, unpack
from .codec import DEFAULT_MAX_PIXELS, Codec
from .entropy_coder import DEFAULT_RDOQ_LAMBDA
from .errors import InvalidParameter, ModelLoadError, SslicError
from .imageio import OUTPUT_FORMATS, encode_image
from .refine import MAX_REFINE_STEPS

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL = 4
EXIT_IO = 5


def _rdoq_lambda(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a comma list of numbers: {text!r}") from None
    if not all(0.0 <= value <= 100.0 for value in values):
        raise argparse.ArgumentTypeError(f"each λ must be between 0 and 100, got {text}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslic", description="Learned variable-rate image codec (ONNX Runtime).")
    parser.add_argument("--model-dir", default=None, help="artifact folder (default: $SSLIC_MODEL_DIR or the shipped model)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--providers", default=None, help="comma list of ONNX Runtime providers (default: CUDA if present, CPU)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image accepted")
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser("compress", help="image → sslic container")
    compress.add_argument("input", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF, PPM); '-' for stdin")
    compress.add_argument("output", help="container file; '-' for stdout")
    compress.add_argument("--level", default=None, help="1..L, a comma list such as 1,3, or 'all' (default: finest)")
    compress.add_argument(
        "--rdoq", type=_rdoq_lambda, default=None, metavar="LAMBDA",
        help=f"rate-distortion optimised rounding: the squared latent error one bit is worth, one number for every "
             f"level or a comma list, one per level (0: plain rounding; larger: fewer bytes, lower quality; default: "
             f"the λ the model's tables were fitted for, else {DEFAULT_RDOQ_LAMBDA} below the finest level, 0 at it)",
    )
    compress.add_argument(
        "--refine", type=int, default=0, metavar="STEPS",
        help=f"latent refinement: STEPS gradient steps through the decoder per level before rounding, "
             f"0..{MAX_REFINE_STEPS} (slower; smaller files at the same quality; default 0)",
    )

    decompress = commands.add_parser("decompress", help="sslic container → image")
    decompress.add_argument("input", help="container file; '-' for stdin")
    decompress.add_argument("output", help="image file (.png, .webp lossless, .jpg); '-' for PNG on stdout")
    decompress.add_argument("--level", type=int, default=None, help="level to decode (default: finest present)")

    info = commands.add_parser("info", help="print a container's header as JSON")
    info.add_argument("input", help="container file; '-' for stdin")

    serve = commands.add_parser("serve", help="run the HTTP service (settings from SSLIC_* environment variables)")
    serve.add_argument("--host", default=None, help="default: $SSLIC_HOST or 0.0.0.0")
    serve.add_argument("--port", type=int, default=None, help="default: $SSLIC_PORT or 8000")

    extract = commands.add_parser("extract", help="copy one level of a multi-level container (no model run)")
    extract.add_argument("input")
    extract.add_argument("output")
    extract.add_argument("--level", type=int, default=None, help="level to keep (default: finest present)")
    return parser


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _write(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    Path(path).write_bytes(data)


def _output_format(path: str) -> str:
    if path == "-":
        return "png"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in OUTPUT_FORMATS:
        raise InvalidParameter(f"cannot tell the output format from {path!r}; use .png, .webp or .jpg")
    return suffix


def _codec(args: argparse.Namespace) -> Codec:
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    return Codec.from_dir(args.model_dir, providers=providers, threads=args.threads, max_pixels=args.max_pixels,
                          rdoq_lambda=getattr(args, "rdoq", None), refine_steps=getattr(args, "refine", 0))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import Settings

    overrides = {
        "model_dir": args.model_dir,
        "threads": args.threads or None,
        "providers": args.providers,
        "max_pixels": args.max_pixels if args.max_pixels != DEFAULT_MAX_PIXELS else None,
        "host": args.host,
        "port": args.port,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    # one worker process per container: scale with replicas (docs/deploy.md), not --workers
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "extract":
        _write(args.output, extract_level(_read(args.input), args.level))
        return 0
    if args.command == "info":
        data = _read(args.input)
        print(json.dumps(unpack(data).header_dict(len(data)), indent=1))
        return 0
    if args.command == "decompress":
        fmt = _output_format(args.output)
        data = _read(args.input)
        codec = _codec(args)
        image = codec.decompress(data, level=args.level)
        _write(args.output, encode_image(image, fmt))
        return 0
    data = _read(args.input)
    codec = _codec(args)
    container = codec.compress(data, levels=args.level)
    _write(args.output, container)
    if args.output != "-":
        info = codec.info(container)
        print(
            f"{args.output}: {info['bytes']} bytes, {info['bpp_total']:.4f} bpp, "
            f"level(s) {[entry['level'] for entry in info['levels']]}, {info['width']}×{info['height']} {info['mode']}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ModelLoadError as error:
        print(f"sslic: cannot load the model: {error.detail}", file=sys.stderr)
        return EXIT_MODEL
    except SslicError as error:
        print(f"sslic: {error.code}: {error.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"sslic: {error.strerror or error}: {getattr(error, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_IO


if __name__ == "__main__":
    sys.exit(main())
