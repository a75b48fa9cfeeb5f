-- title = "Orders (SQL file)"
-- description = """The orders report declared as a SQL file: one row per order with its item
-- count, total and amount paid (correlated subqueries), the customer's name from PRIMARY."""
-- kind = "rows"
-- key = ["id"]
-- sort_keys = ["placed_at", "total_cents", "id"]
-- default_sort = "-placed_at"
-- root = "orders"
--
-- [columns]
-- id = { type = "integer", description = "order id" }
-- customer_id = { type = "integer", description = "customer id" }
-- customer_name = { type = "string", description = "customer's name (from PRIMARY)" }
-- status = { type = "string", description = "pending, paid, shipped, closed or cancelled" }
-- placed_at = { type = "datetime", description = "when the order was placed (UTC)" }
-- closed_at = { type = "datetime", description = "when it was closed or cancelled (UTC)" }
-- items = { type = "integer", description = "number of order lines" }
-- total_cents = { type = "integer", description = "sum of quantity x unit price" }
-- paid_cents = { type = "integer", description = "sum of payments" }
--
-- [filters]
-- customer_id = ["eq", "in"]
-- status = ["eq", "ne", "in"]
-- placed_at = ["gte", "gt", "lte", "lt"]
-- total_cents = ["gte", "gt", "lte", "lt"]
--
-- [[lookups]]
-- column = "customer_name"
-- key = "customer_id"
-- table = "customers"
-- value = "name"
SELECT o.id, o.customer_id, o.status, o.placed_at, o.closed_at,
       (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items,
       (SELECT CAST(coalesce(sum(i.quantity * i.unit_price_cents), 0) AS BIGINT)
          FROM order_items i WHERE i.order_id = o.id) AS total_cents,
       (SELECT CAST(coalesce(sum(p.amount_cents), 0) AS BIGINT)
          FROM payments p WHERE p.order_id = o.id) AS paid_cents
FROM orders o
