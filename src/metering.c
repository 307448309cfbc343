/*-------------------------------------------------------------------------
 *
 * metering.c
 *		Prices and the cost of a call.
 *
 * The price in force normally arrives with the one kept plan of policy.c
 * (a LEFT JOIN LATERAL over quota_ext.prices), so a priced consume costs no
 * extra round trip.  That plan looks the price up at the instant the request
 * starts; the charge instant comes later (after the counter locks), so the
 * plan also returns when the next price version starts, and in the rare
 * case that the charge instant reaches it, QuotaPriceAt() looks again.
 *
 * Money is numeric and exact.  A call's cost is
 *		units * unit_price + input_tokens * input_per_1k / 1000
 *		+ output_tokens * output_per_1k / 1000
 * rounded once, half away from zero, to micro-units (1e-6) of the price's
 * currency.  That rounded amount is what the usage row carries (numeric,
 * scale 6) and what cost quotas count (bigint micro-units), so a budget's
 * counter always equals the sum of its period's ledger costs and invoices
 * add up the same numbers.  See doc/metering.md.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "metering.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

/*
 * The columns a price query returns, in this order, from first_col on:
 * price_id, currency, unit_price, input_per_1k, output_per_1k, valid_until.
 */
void
QuotaPriceFromTuple(HeapTuple tup, TupleDesc desc, int first_col, QuotaPrice *out)
{
	bool		isnull;
	Datum		d;

	memset(out, 0, sizeof(*out));
	d = SPI_getbinval(tup, desc, first_col + 5, &isnull);
	if (isnull)
		TIMESTAMP_NOEND(out->valid_until);
	else
		out->valid_until = DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, first_col, &isnull);
	if (isnull)
		return;
	out->found = true;
	out->price_id = DatumGetInt64(d);
	strlcpy(out->currency, SPI_getvalue(tup, desc, first_col + 1), sizeof(out->currency));
	d = SPI_getbinval(tup, desc, first_col + 2, &isnull);
	out->has_unit = !isnull;
	out->unit_price = isnull ? (Datum) 0 : datumCopy(d, false, -1);
	d = SPI_getbinval(tup, desc, first_col + 3, &isnull);
	out->has_input = !isnull;
	out->input_per_1k = isnull ? (Datum) 0 : datumCopy(d, false, -1);
	d = SPI_getbinval(tup, desc, first_col + 4, &isnull);
	out->has_output = !isnull;
	out->output_per_1k = isnull ? (Datum) 0 : datumCopy(d, false, -1);
}

/*
 * QuotaPriceAt
 *		The price a tenant pays for a model at an instant (inside SPI).
 */
void
QuotaPriceAt(int64 tenant_id, int64 model_id, TimestampTz at, QuotaPrice *out)
{
	static QuotaPlan plan = {
		"SELECT p.price_id, p.currency, p.unit_price, p.input_per_1k, p.output_per_1k, "
		"       NULL::pg_catalog.timestamptz "
		"FROM quota_ext._price_in_force($1, $2, $3) p",
		3, {INT8OID, INT8OID, TIMESTAMPTZOID}
	};
	Datum		values[3];

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(model_id);
	values[2] = TimestampTzGetDatum(at);
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed != 1)
		elog(ERROR, "price lookup returned no row");
	QuotaPriceFromTuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, out);
}

/*
 * QuotaPriceById
 *		A price version by id (inside SPI): settlements keep the price their
 *		reservation was charged at.
 */
void
QuotaPriceById(int64 price_id, QuotaPrice *out)
{
	static QuotaPlan plan = {
		"SELECT p.price_id, p.currency, p.unit_price, p.input_per_1k, p.output_per_1k, "
		"       NULL::pg_catalog.timestamptz "
		"FROM quota_ext.prices p WHERE p.price_id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	};
	Datum		values[1];

	memset(out, 0, sizeof(*out));
	if (price_id == 0)
		return;
	values[0] = Int64GetDatum(price_id);
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed != 1)
		elog(ERROR, "price %lld vanished", (long long) price_id);
	QuotaPriceFromTuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, out);
}

static Datum
num_mul(Datum a, Datum b)
{
	return DirectFunctionCall2(numeric_mul, a, b);
}

static Datum
num_add(Datum a, Datum b)
{
	return DirectFunctionCall2(numeric_add, a, b);
}

static Datum
num_int(int64 v)
{
	return NumericGetDatum(int64_to_numeric(v));
}

/*
 * QuotaCostMicro
 *		The cost of units and tokens at a price, in micro-units (see the file
 *		header).  0 without a price.  Raises 22003 past the bigint range.
 */
int64
QuotaCostMicro(const QuotaPrice *price, int64 units, int64 input_tokens, int64 output_tokens)
{
	Datum		micro;

	if (!price->found)
		return 0;
	micro = num_int(0);
	if (price->has_unit && units != 0)
		micro = num_add(micro, num_mul(num_mul(num_int(units), price->unit_price),
									   num_int(1000000)));
	if (price->has_input && input_tokens != 0)
		micro = num_add(micro, num_mul(num_mul(num_int(input_tokens), price->input_per_1k),
									   num_int(1000)));
	if (price->has_output && output_tokens != 0)
		micro = num_add(micro, num_mul(num_mul(num_int(output_tokens), price->output_per_1k),
									   num_int(1000)));
	micro = DirectFunctionCall2(numeric_round, micro, Int32GetDatum(0));
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, micro));
}

/*
 * QuotaMicroToNumeric
 *		Micro-units as money: numeric with scale 6.
 */
Datum
QuotaMicroToNumeric(int64 micro)
{
	return NumericGetDatum(int64_div_fast_to_numeric(micro, 6));
}

/*
 * QuotaNumericToMicro
 *		Money (scale <= 6, as stored on usage rows) as micro-units.
 */
int64
QuotaNumericToMicro(Datum amount)
{
	Datum		micro = num_mul(amount, num_int(1000000));

	micro = DirectFunctionCall2(numeric_round, micro, Int32GetDatum(0));
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, micro));
}
