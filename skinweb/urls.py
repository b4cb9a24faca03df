from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.utils.translation import gettext_lazy

from skinweb.accounts import sso, twofactor
from skinweb.api import pages as api_pages

admin.site.site_header = gettext_lazy("skinweb administration")
admin.site.site_title = gettext_lazy("skinweb admin")


@login_not_required
def favicon(request):
    """Browsers ask for /favicon.ico whatever the page says: send them to the static copy."""
    return redirect(static("favicon.ico"))


urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("accounts/login/", sso.LoginPage.as_view(), name="login"),
    path("accounts/sso/callback/", login_not_required(sso.SSOCallback.as_view()), name="sso_callback"),
    path("accounts/sso/refused/", login_not_required(sso.refused), name="sso_refused"),
    path("accounts/sso/<slug:name>/", login_not_required(sso.SSOLogin.as_view()), name="sso_login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/two-factor/", twofactor.verify, name="two_factor_verify"),
    path("accounts/two-factor/setup/", twofactor.setup, name="two_factor_setup"),
    path("account/security/", twofactor.security, name="account_security"),
    path("admin/", admin.site.urls),
    path("manage/", include("skinweb.models_registry.urls")),
    path("api/", include("skinweb.api.urls")),
    path("api/docs/", api_pages.api_docs, name="api_docs"),
    path("referrals/", include("skinweb.referrals.urls")),
    path("account/tokens/", api_pages.token_page, name="api_tokens"),
    path("account/tokens/<str:key>/revoke/", api_pages.token_revoke, name="api_token_revoke"),
    path("", include("skinweb.clinic.urls")),
]
