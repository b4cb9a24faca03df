from oauth2_provider.oauth2_validators import OAuth2Validator


class HospitalClaims(OAuth2Validator):
    """The claims a hospital would put in: who, and which clinic and role in skinweb (kept, for the
    test, in the provider's user record: ``last_name`` the clinic, ``first_name`` the roles)."""

    oidc_claim_scope = None  # every claim, whatever the scopes

    def get_additional_claims(self, request):
        user = request.user
        roles = [r for r in user.first_name.split(",") if r]
        return {"preferred_username": user.username, "email": f"{user.username}@hospital.example",
                "given_name": user.username.capitalize(), "skinweb_clinic": user.last_name,
                "skinweb_role": roles[0] if len(roles) == 1 else roles}
