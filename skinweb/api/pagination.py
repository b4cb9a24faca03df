"""The API's pages (settings: DEFAULT_PAGINATION_CLASS; apart from the views, which DRF imports after it)."""

import re

from django.utils.translation import gettext
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination


class Pages(PageNumberPagination):
    """DRF's page numbers, and a page that is not a number a 400 (DRF would quietly give page 1)."""

    def get_page_number(self, request, paginator):
        number = request.query_params.get(self.page_query_param, "1")
        if not re.fullmatch(r"[1-9][0-9]{0,8}|last", number):
            raise exceptions.ValidationError({self.page_query_param: [gettext("A page number: 1, 2, 3…")]})
        return number
