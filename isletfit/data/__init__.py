"""Data readers: vendor exports and generic CSVs in, one clean `PatientData` out.

Read a patient with `read` (format detected from the content, or named), several with
`read_many`; the patient sheet and labs with `read_patients` and `read_labs`. Put
readings on a regular grid with `resample` and pad patients into batches with `stack`
and `stack_events` for `jax.vmap`. All units are canonical here: time [min], glucose
[mg/dL], insulin [U], basal [U/h], carbohydrate [g].
"""

from ._dexcom import DexcomClarity as DexcomClarity
from ._format import Format as Format
from ._generic import GenericCSV as GenericCSV
from ._grid import Grid as Grid
from ._grid import StackedEvents as StackedEvents
from ._grid import StackedGrid as StackedGrid
from ._grid import resample as resample
from ._grid import stack as stack
from ._grid import stack_events as stack_events
from ._libre import LibreView as LibreView
from ._nightscout import Nightscout as Nightscout
from ._patient import BasalSegments as BasalSegments
from ._patient import Boluses as Boluses
from ._patient import Carbs as Carbs
from ._patient import CGMReadings as CGMReadings
from ._patient import LongActingDoses as LongActingDoses
from ._patient import PatientData as PatientData
from ._patient import SMBGReadings as SMBGReadings
from ._raw import RawRecords as RawRecords
from ._readers import available_formats as available_formats
from ._readers import read as read
from ._readers import read_many as read_many
from ._sheets import read_labs as read_labs
from ._sheets import read_patients as read_patients
from ._tidepool import Tidepool as Tidepool

__all__ = [
    "BasalSegments",
    "Boluses",
    "CGMReadings",
    "Carbs",
    "DexcomClarity",
    "Format",
    "GenericCSV",
    "Grid",
    "LibreView",
    "LongActingDoses",
    "Nightscout",
    "PatientData",
    "RawRecords",
    "SMBGReadings",
    "StackedEvents",
    "StackedGrid",
    "Tidepool",
    "available_formats",
    "read",
    "read_labs",
    "read_many",
    "read_patients",
    "resample",
    "stack",
    "stack_events",
]
