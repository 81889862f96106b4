"""The one error the data layer raises: a dataset, file or pool that cannot serve the request."""

from ldreg.errors import LdregError


class DataError(LdregError):
    """A dataset or probing file is malformed, or a generator lacks what it draws on.

    The message names the file/row/field at fault and what to do about it.
    """
