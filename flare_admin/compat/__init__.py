"""Views of the admin Session shaped like other frameworks' clients.

:mod:`flare_admin.compat.scaleout`: Scaleout Edge / FEDn's ``APIClient``. These modules
build jobs with :mod:`flare_job` (which depends only on :mod:`flare_protocol`); importing
:mod:`flare_admin` does not import them.
"""
