-- title = "Customer summary (SQL file)"
-- description = """The customer-summary report declared as a SQL file: per customer, lifetime
-- orders, revenue (orders not cancelled, at least min_total_cents each), open orders, first
-- and last order, each database's partials combined exactly."""
-- kind = "aggregate"
-- key = ["id"]
-- group_by = ["id"]
-- sort_keys = ["id", "name", "revenue_cents"]
-- default_sort = "-revenue_cents"
-- root = "orders"
--
-- [columns]
-- id = { type = "integer", description = "customer id" }
-- name = { type = "string", description = "customer's name" }
-- orders = { type = "integer", description = "orders placed" }
-- revenue_cents = { type = "integer", description = "revenue of orders not cancelled" }
-- open_orders = { type = "integer", description = "orders pending, paid or shipped" }
-- first_order_at = { type = "datetime", description = "first order (UTC)" }
-- last_order_at = { type = "datetime", description = "last order (UTC)" }
--
-- [params.min_total_cents]
-- type = "integer"
-- default = 0
-- description = "count only orders of at least this total in revenue_cents"
--
-- [combine]
-- orders = "count"
-- revenue_cents = "sum"
-- open_orders = "sum"
-- first_order_at = "min"
-- last_order_at = "max"
--
-- [filters]
-- revenue_cents = ["gte", "gt", "lte", "lt"]
-- open_orders = ["gte", "gt", "eq"]
--
-- [[lookups]]
-- column = "name"
-- key = "id"
-- table = "customers"
-- value = "name"
SELECT o.customer_id AS id,
       count(*) AS orders,
       CAST(coalesce(sum(CASE WHEN o.status <> 'cancelled' AND coalesce(t.total, 0) >= :min_total_cents
                              THEN t.total ELSE 0 END), 0) AS BIGINT) AS revenue_cents,
       CAST(coalesce(sum(CASE WHEN o.status IN ('pending', 'paid', 'shipped') THEN 1 ELSE 0 END), 0)
            AS BIGINT) AS open_orders,
       min(o.placed_at) AS first_order_at,
       max(o.placed_at) AS last_order_at
FROM orders o
LEFT JOIN (SELECT order_id, sum(quantity * unit_price_cents) AS total
           FROM order_items GROUP BY order_id) t ON t.order_id = o.id
GROUP BY o.customer_id
