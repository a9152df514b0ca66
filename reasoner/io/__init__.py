"""I/O at the edge of the loops: atomic JSON files and the metrics sinks."""

from reasoner.io.files import (exists, is_local, join, makedirs, read_json, write_bytes, write_json,
                               write_text)
from reasoner.io.log import barrier, is_writer, log
from reasoner.io.metrics_log import MetricsWriter, Progress
