-- The extension is installed (pg_regress --load-extension) and the library
-- was preloaded: the context setting exists and the prefix is reserved.
SELECT extname, extversion FROM pg_extension WHERE extname IN ('tenancy', 'pgcrypto') ORDER BY 1;
SHOW app.tenant_id;
SELECT name, setting, context FROM pg_settings
 WHERE name = 'app.tenant_id' OR name LIKE 'tenancy.%' ORDER BY name;
-- tenancy.* is reserved: a misspelled setting is refused.
SET tenancy.no_such_setting = 'x';
-- Other app.* settings still work (the app prefix is not reserved).
SET app.something_else = 'fine';
SHOW app.something_else;
-- The roles exist and cannot log in.
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'tenancy\_%' ORDER BY 1;
