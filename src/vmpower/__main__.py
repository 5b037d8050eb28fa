import os

if os.environ.get("VMPOWER_WORKER"):  # `vmpower worker run`: the preloaded worker runs the step
    import sys

    from vmpower.ops.worker import forward

    code = forward(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)

from vmpower.cli import main  # noqa: E402

raise SystemExit(main())
