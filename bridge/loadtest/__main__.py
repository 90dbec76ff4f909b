"""python -m bridge.loadtest"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __doc__ as _DOC, add_arguments, main

if __name__ == "__main__":
    from .. import config as _config
    _parser = argparse.ArgumentParser(prog="python -m bridge.loadtest", description=_DOC,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    _parser.add_argument("-c", "--config", default=os.environ.get("BRIDGE_CONFIG", "config.yaml"),
                         help="config file (default: config.yaml; env BRIDGE_CONFIG)")
    add_arguments(_parser)
    _args = _parser.parse_args()
    try:
        _cfg = _config.load(_args.config)
    except _config.ConfigError as _exc:
        print(f"bridge loadtest: configuration errors:\n{_exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
        sys.exit(uvloop.run(main(_args, _cfg)))
    except KeyboardInterrupt:
        sys.exit(130)
