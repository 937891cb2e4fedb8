"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the handlers in bot/api.py; tests/api/test_openapi.py runs schemathesis
against the live server, so a difference between the two fails the build.
"""

from __future__ import annotations

from typing import Any

from billing_core.export import CSV_INVOICE_FIELDS

DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["12.30"]}
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601 with a UTC offset",
    "examples": ["2026-10-03T12:00:00+00:00"],
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


IMPORT_RESPONSES = {
    "200": {
        "description": "What was accepted, skipped as a duplicate, or rejected (by index)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportResult"}}},
    },
    "400": _error("The body is not JSON"),
    "401": _error("Missing or wrong bearer token"),
    "413": _error("A body over 16 MiB"),
    "422": _error("Not a list, more than 10,000 items, or a number written as a float"),
    "503": _error("The API is disabled (no BILLING_API_TOKEN)"),
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "billing-bot API",
            "version": "1",
            "description": "Usage and payments in, invoices out. Bearer BILLING_API_TOKEN.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/usage": {
                "post": {
                    "summary": "Import usage events (idempotent by id)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "maxItems": 10000,
                                    "items": {
                                        "description": (
                                            "Each item should be a UsageEvent; an item that is not "
                                            "is rejected by its index and the others still land"
                                        )
                                    },
                                }
                            }
                        },
                    },
                    "responses": IMPORT_RESPONSES,
                }
            },
            "/api/v1/payments": {
                "post": {
                    "summary": "Import payments (idempotent by reference)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "maxItems": 10000,
                                    "items": {
                                        "description": (
                                            "Each item should be a Payment; an item that is not "
                                            "is rejected by its index and the others still land"
                                        )
                                    },
                                }
                            }
                        },
                    },
                    "responses": IMPORT_RESPONSES,
                }
            },
            "/api/v1/invoices": {
                "get": {
                    "summary": "Export invoices with their lines (SPEC 4.4)",
                    "parameters": [
                        {
                            "name": "org",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {"name": "group", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "string", "format": "date"},
                            "description": "invoices dated on or after this day",
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The invoices",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Invoice"},
                                    }
                                },
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "401": _error("Missing or wrong bearer token"),
                        "404": _error("No such organization or billing group"),
                        "422": _error("A parameter is malformed"),
                        "503": _error("The API is disabled (no BILLING_API_TOKEN)"),
                    },
                }
            },
            "/api/v1/invoices/{number}.pdf": {
                "get": {
                    "summary": "One invoice as a PDF, in its organization's locale",
                    "parameters": [
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The invoice",
                            "content": {
                                "application/pdf": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "401": _error("Missing or wrong bearer token"),
                        "404": _error("No invoice with that number"),
                        "503": _error("The API is disabled (no BILLING_API_TOKEN)"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": ERROR,
                "ImportResult": {
                    "type": "object",
                    "required": ["accepted", "duplicates", "rejected"],
                    "properties": {
                        "accepted": {"type": "integer", "minimum": 0},
                        "duplicates": {"type": "integer", "minimum": 0},
                        "rejected": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index", "reason"],
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "reason": {"type": "string"},
                                },
                            },
                        },
                        "receipts": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "UsageEvent": {
                    "type": "object",
                    "required": ["id", "project", "metric", "quantity", "timestamp"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "minLength": 1, "maxLength": 128},
                        "project": {"type": "string", "description": "ORGANIZATION/PROJECT"},
                        "metric": {"type": "string"},
                        "quantity": DECIMAL,
                        "timestamp": TIMESTAMP,
                    },
                },
                "Payment": {
                    "type": "object",
                    "required": [
                        "reference",
                        "billing_group",
                        "amount",
                        "currency",
                        "method",
                        "received_at",
                    ],
                    "additionalProperties": False,
                    "properties": {
                        "reference": {"type": "string", "minLength": 1, "maxLength": 128},
                        "billing_group": {"type": "string", "description": "ORGANIZATION/GROUP"},
                        "amount": DECIMAL,
                        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
                        "method": {
                            "type": "string",
                            "enum": ["card", "bank_transfer", "marketplace"],
                        },
                        "received_at": TIMESTAMP,
                    },
                },
                "Invoice": {
                    "type": "object",
                    "required": [*CSV_INVOICE_FIELDS, "lines"],
                    "properties": {
                        "number": {"type": "string"},
                        "organization": {"type": "string"},
                        "billing_group": {"type": "string"},
                        "currency": {"type": "string"},
                        "period_start": TIMESTAMP,
                        "period_end": TIMESTAMP,
                        "invoice_date": {"type": "string", "format": "date"},
                        "due_date": {"type": "string", "format": "date"},
                        "status": {"type": "string", "enum": ["open", "paid"]},
                        **{
                            k: DECIMAL
                            for k in (
                                "subtotal",
                                "discount",
                                "tax",
                                "total",
                                "credits_applied",
                                "amount_due",
                                "amount_paid",
                            )
                        },
                        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}},
                    },
                },
                "Line": {
                    "type": "object",
                    "required": [
                        "kind",
                        "metric",
                        "category",
                        "quantity",
                        "billable_quantity",
                        "amount",
                        "projects",
                    ],
                    "properties": {
                        "kind": {"type": "string", "enum": ["usage", "subscription"]},
                        "metric": {"type": ["string", "null"]},
                        "category": {"type": "string"},
                        "quantity": DECIMAL,
                        "billable_quantity": DECIMAL,
                        "amount": DECIMAL,
                        "late_period_start": TIMESTAMP,
                        "projects": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["project", "quantity", "amount"],
                                "properties": {
                                    "project": {"type": "string"},
                                    "quantity": DECIMAL,
                                    "amount": DECIMAL,
                                },
                            },
                        },
                    },
                },
            },
        },
    }
