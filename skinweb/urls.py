from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

admin.site.site_header = "skinweb administration"
admin.site.site_title = "skinweb admin"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("manage/", include("skinweb.models_registry.urls")),
    path("", include("skinweb.clinic.urls")),
]
