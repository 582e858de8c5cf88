"""A user's own llamaduo project: `llamaduo init` makes one (git + DVC, this repository's pipeline, the pinned
package version), and `llamaduo status` reads where its loop stands from the state files."""

from llamaduo.project.init import init
from llamaduo.project.status import status

__all__ = ["init", "status"]
