"""What drf-spectacular says of the token scheme (it knows knox's class, not this subclass)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "skinweb.api.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <your token>`: make one on the API tokens page (shown once)."}


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "skinweb.api.auth.BrowserSessionAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


ERRORS = {
    "400": "The request is malformed or breaks a rule: a message per field (or `detail`); nothing was changed.",
    "401": "No token, or a wrong, expired or revoked one.",
    "403": "Your role may not do this.",
    "404": "No such record in your clinic (another clinic's records do not exist for you).",
    "415": "Unsupported body type: send JSON (uploads: multipart/form-data).",
    "429": "Too many calls: wait the seconds the Retry-After header gives.",
}


def document_errors(result, generator, request, public):
    """drf-spectacular's post-processing hook: every operation documents the error answers it can give,
    as they come (DRF's ``{"detail": …}``; a 400's messages per field)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    schemas["ValidationErrors"] = {"type": "object", "additionalProperties": True,
                                   "description": "Messages per field (a list of strings, or nested per item)"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            writes = method in ("post", "put", "patch")
            codes = ["401", "403", "404", "429"]
            if writes or operation.get("parameters"):
                codes.append("400")
            if writes:
                codes.append("415")
            responses = operation.setdefault("responses", {})
            for code in codes:
                name = "ValidationErrors" if code == "400" else "Error"
                error = {"$ref": f"#/components/schemas/{name}"}
                if code in responses:  # an answer of its own (an upload's verdicts): either
                    own = responses[code].get("content", {}).get("application/json", {}).get("schema")
                    error = {"anyOf": [own, error]} if own else error
                responses[code] = {"description": responses.get(code, {}).get("description") or ERRORS[code],
                                   "content": {"application/json": {"schema": error}}}
    return result
