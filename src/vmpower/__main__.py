import os

if os.environ.get("VMPOWER_WORKER"):  # `vmpower worker run`: the preloaded worker runs the step
    import sys

    from vmpower.ops.worker import forward

    code = forward(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)

import sys  # noqa: E402

from vmpower import heap  # noqa: E402
from vmpower.cli import command_of, main  # noqa: E402

heap.reexec(command_of(sys.argv[1:]))  # a data-heavy step: once more, glibc keeping freed memory
raise SystemExit(main())
