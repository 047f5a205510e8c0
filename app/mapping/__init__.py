"""Pure mapping layer: Debezium change events -> canonical CloudEvents (``cdp.events``).

No Kafka or database import: the Faust agent in ``streams/`` is a thin adapter around
:class:`Mapper` (CDC topics) and :func:`parse_ingest` (``cdp.ingest``).
"""

from app.mapping.cloudevents import CanonicalEvent, event_id, record_key, serialize
from app.mapping.config import (
    MappingConfigError,
    MappingFile,
    load_mapping_dir,
    load_mapping_file,
    validate_mapping_dir,
    validate_mapping_file,
)
from app.mapping.engine import Mapper
from app.mapping.errors import MappingError
from app.mapping.schema import parse_ingest, validate_canonical

__all__ = [
    "CanonicalEvent",
    "Mapper",
    "MappingConfigError",
    "MappingError",
    "MappingFile",
    "event_id",
    "load_mapping_dir",
    "load_mapping_file",
    "parse_ingest",
    "record_key",
    "serialize",
    "validate_canonical",
    "validate_mapping_dir",
    "validate_mapping_file",
]
