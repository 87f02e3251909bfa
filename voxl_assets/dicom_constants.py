"""DICOM UIDs used by VOXL, typed (pynetdicom generates its ``sop_class`` names at import time,
which type checkers cannot see)."""

from pydicom.uid import UID

STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
VERIFICATION = UID("1.2.840.10008.1.1")
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
