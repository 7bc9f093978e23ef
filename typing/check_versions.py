"""A user reads the package versions: each is a plain ``str``."""

import clip4dm
import egtr
import vl_core

versions: list[str] = [vl_core.__version__, clip4dm.__version__, egtr.__version__]
report: dict[str, str] = vl_core.environment_report(("torch",))
