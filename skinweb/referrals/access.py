"""Where a referrer may go: the referral pages and their own account's; everything else answers 404, as a record
of another clinic does (the clinic's pages, the API, the admin)."""

from django.http import Http404
from django.shortcuts import redirect

# Outside the referrals namespace: logging in and out, the account's security and second factor, its API tokens;
# in the API, the referral routes (api:referral-…; the API's own permission, NoReferrers, guards the rest).
REFERRER_PAGES = {"login", "logout", "account_security", "two_factor_verify", "two_factor_setup", "sso_login",
                  "sso_callback", "sso_refused", "favicon", "api_tokens", "api_token_revoke", "api_docs"}


class ReferrerScopeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        user = getattr(request, "user", None)
        if user is None or not getattr(user, "is_referrer", False):
            return None
        match = request.resolver_match
        if match is None or "referrals" in match.namespaces or match.url_name in REFERRER_PAGES:
            return None
        if "api" in match.namespaces and (match.url_name or "").startswith("referral-"):
            return None
        if match.url_name == "dashboard" and request.method == "GET":
            return redirect("referrals:mine")  # the home page: their practice's referrals
        raise Http404("Not a page of the referral service")
